//! The policer's gate, `danm.policer.v1.Gate`, and how the `danm` CNI plugin reaches it: a
//! unix socket on the node, [`DEFAULT_SOCKET`] unless `00-danm.conf` names another.

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// `danm.policer.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("danm.policer.v1");
}

/// Where the policer listens on its node.
pub const DEFAULT_SOCKET: &str = "/var/run/danm/policer.sock";

/// Connects to the policer's socket; every call on the client is limited to `timeout`.
pub async fn connect(
    socket: &Path,
    timeout: Duration,
) -> Result<v1::gate_client::GateClient<Channel>, tonic::transport::Error> {
    let socket = socket.to_owned();
    // The URI only names the channel: the connector dials the socket whatever it says.
    let channel = Endpoint::from_static("http://policer.sock")
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(v1::gate_client::GateClient::new(channel))
}
