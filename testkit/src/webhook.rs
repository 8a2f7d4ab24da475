//! Admission webhooks in the test bed: registering `deploy/`'s WebhookConfigurations with
//! the API server pointed at a loopback address (the API server cannot reach a Service:
//! no kube-proxy runs), and a TCP forwarder that spreads connections over several webhook
//! processes, as a Service spreads them over a Deployment's pods.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration, WebhookClientConfig,
};
use kube::api::{Api, PostParams};
use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};

use crate::control_plane::ControlPlane;

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The file cannot be read.
    #[error("cannot read {0}: {1}")]
    Read(String, #[source] std::io::Error),
    /// A document is not a WebhookConfiguration.
    #[error("{0}")]
    Parse(String),
    /// The API server refused it.
    #[error("creating {0}: {1}")]
    Create(String, #[source] kube::Error),
}

/// Creates the Mutating and Validating WebhookConfigurations of `file`, each webhook's
/// `clientConfig` replaced by `https://<at><its service path>` with the control plane's CA
/// as `caBundle` (serve with [`ControlPlane::serving_cert`]).
pub async fn register(
    plane: &ControlPlane,
    file: &Path,
    at: SocketAddr,
) -> Result<(), RegisterError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| RegisterError::Read(file.display().to_string(), e))?;
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(&text).map_err(|e| RegisterError::Parse(e.to_string()))?;
    let point = |config: &mut WebhookClientConfig| {
        let path = config
            .service
            .as_ref()
            .and_then(|s| s.path.clone())
            .unwrap_or_default();
        *config = WebhookClientConfig {
            url: Some(format!("https://{at}{path}")),
            ca_bundle: Some(ByteString(plane.ca_pem().as_bytes().to_vec())),
            service: None,
        };
    };
    let client = plane.client().await;
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let parse = |e: serde_json::Error| RegisterError::Parse(format!("{kind}: {e}"));
        match kind.as_str() {
            "MutatingWebhookConfiguration" => {
                let mut c: MutatingWebhookConfiguration =
                    serde_json::from_value(doc).map_err(parse)?;
                c.webhooks
                    .iter_mut()
                    .flatten()
                    .for_each(|w| point(&mut w.client_config));
                Api::<MutatingWebhookConfiguration>::all(client.clone())
                    .create(&PostParams::default(), &c)
                    .await
                    .map_err(|e| RegisterError::Create(kind.clone(), e))?;
            }
            "ValidatingWebhookConfiguration" => {
                let mut c: ValidatingWebhookConfiguration =
                    serde_json::from_value(doc).map_err(parse)?;
                c.webhooks
                    .iter_mut()
                    .flatten()
                    .for_each(|w| point(&mut w.client_config));
                Api::<ValidatingWebhookConfiguration>::all(client.clone())
                    .create(&PostParams::default(), &c)
                    .await
                    .map_err(|e| RegisterError::Create(kind.clone(), e))?;
            }
            other => return Err(RegisterError::Parse(format!("unexpected kind {other:?}"))),
        }
    }
    Ok(())
}

/// A TCP forwarder on a free loopback port that spreads connections over `backends` as a
/// Service spreads them over a Deployment's pods, made deterministic for tests: Go's HTTP/2
/// client (the API server's) dials many connections at once when it needs one, keeps the
/// first that completes and drops the others, so alternating per connection would leave
/// the choice to a race. Here connections that arrive together (less than
/// [`TOGETHER`] apart) go to one backend, and each later group to the next. The webhook
/// closes a connection after 64 requests, so a long burst of admissions reaches every
/// backend in turn. Runs on a thread of its own (it outlives any test's runtime); returns
/// its address.
pub fn round_robin(backends: Vec<SocketAddr>) -> std::io::Result<SocketAddr> {
    round_robin_on("127.0.0.1:0", backends)
}

/// [`round_robin`], listening on `bind` (e.g. an address of a test bridge, for clients in
/// other network namespaces).
pub fn round_robin_on(bind: &str, backends: Vec<SocketAddr>) -> std::io::Result<SocketAddr> {
    if backends.is_empty() {
        return Err(std::io::Error::other("no backend to forward to"));
    }
    let std_listener = std::net::TcpListener::bind(bind)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::spawn(move || {
        runtime.block_on(async move {
            let Ok(listener) = TcpListener::from_std(std_listener) else {
                return;
            };
            let (mut current, mut last) = (backends.len() - 1, None::<Instant>);
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let now = Instant::now();
                if last.is_none_or(|t| now.duration_since(t) >= TOGETHER) {
                    current = (current + 1) % backends.len();
                }
                last = Some(now);
                let backend = backends[current];
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(backend).await {
                        // A forwarder must not add Nagle delays of its own.
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
    });
    Ok(addr)
}

/// Connections arriving less than this apart are one group (see [`round_robin`]).
pub const TOGETHER: Duration = Duration::from_millis(50);
