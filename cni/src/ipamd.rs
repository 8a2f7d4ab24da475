//! The gRPC client of ipamd as the plugins use it: one connection per call, a deadline on
//! everything, and gRPC statuses turned into CNI errors a runtime can act on.

use std::time::Duration;

use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::protocol::{CniError, ErrorCode, Route};

/// The default ipamd address.
pub const DEFAULT_IPAMD: &str = "http://127.0.0.1:50051";

/// How long connecting to ipamd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Connects to ipamd at `address` (`http://host:port`), with `timeout` on every call.
pub async fn connect(address: &str, timeout: Duration) -> Result<IpamClient<Channel>, CniError> {
    let endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("ipamd: {address:?} is not a valid address"),
                e.to_string(),
            )
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout);
    let channel = endpoint.connect().await.map_err(|e| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("ipamd at {address} is unreachable"),
            source_chain(&e),
        )
    })?;
    Ok(IpamClient::new(channel))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A gRPC error of ipamd as a CNI error; `what` says what was being done.
pub fn cni_error(what: &str, status: &Status) -> CniError {
    let code = match status.code() {
        Code::NotFound | Code::InvalidArgument => ErrorCode::InvalidConfig,
        Code::ResourceExhausted => ErrorCode::PoolExhausted,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            ErrorCode::TryAgainLater
        }
        _ => ErrorCode::Refused,
    };
    CniError::new(
        code,
        format!("{what}: {}", status.message()),
        format!("ipamd answered {:?}", status.code()),
    )
}

/// A network reference from the plugin configuration's words.
pub fn network_ref(kind: &str, namespace: &str, name: &str) -> Result<pb::NetworkRef, CniError> {
    let kind = match kind {
        "" | "DanmNet" => pb::NetworkKind::DanmNet,
        "TenantNetwork" => pb::NetworkKind::TenantNetwork,
        "ClusterNetwork" => pb::NetworkKind::ClusterNetwork,
        other => {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("ipam.kind: {other:?} is not DanmNet, TenantNetwork or ClusterNetwork"),
                String::new(),
            ));
        }
    };
    Ok(pb::NetworkRef {
        kind: kind as i32,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The kind of a network reference, in the words of the configuration.
pub fn kind_name(network: &pb::NetworkRef) -> &'static str {
    match pb::NetworkKind::try_from(network.kind) {
        Ok(pb::NetworkKind::TenantNetwork) => "TenantNetwork",
        Ok(pb::NetworkKind::ClusterNetwork) => "ClusterNetwork",
        _ => "DanmNet",
    }
}

/// Routes of ipamd as CNI routes (those that do not parse are skipped).
pub fn routes(routes: &[pb::Route]) -> Vec<Route> {
    routes
        .iter()
        .filter_map(|r| {
            Some(Route {
                dst: r.destination.parse().ok()?,
                gw: r.gateway.parse().ok(),
            })
        })
        .collect()
}
