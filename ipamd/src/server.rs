//! Serving: the Ipam service, the standard gRPC health service and server reflection.

use std::sync::Arc;

use danm_proto::health;
use danm_proto::v1::ipam_server::IpamServer;
use futures::FutureExt;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::authz::Policy;
use crate::engine::Engine;
use crate::metrics::RpcMetrics;
use crate::observe::ObserveLayer;
use crate::service::IpamService;

/// Why serving failed or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not be built from the descriptors.
    #[error("gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed (transport).
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
    /// The plaintext health listener's task panicked.
    #[error("the health listener stopped unexpectedly")]
    HealthListener,
}

/// Serves the engine on `listener` (plain HTTP/2) until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_tls(engine, listener, None, shutdown).await
}

/// An engine served by a task of this process on a loopback port, plaintext, every caller
/// allowed: ipamd embedded in a test, a bench or a demo. Dropped, it stops serving;
/// [`LocalServer::stop`] also waits for the server to end.
#[derive(Debug)]
pub struct LocalServer {
    /// Where it listens (`127.0.0.1`, a free port).
    pub addr: std::net::SocketAddr,
    /// The engine it serves.
    pub engine: Arc<Engine>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), ServeError>>>,
}

impl LocalServer {
    /// Serves `engine` on a free loopback port.
    pub async fn start(engine: Arc<Engine>) -> std::io::Result<LocalServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(Arc::clone(&engine), listener, async move {
            let _ = stopped.await;
        }));
        Ok(LocalServer {
            addr,
            engine,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// `http://<addr>`, as a client is given it.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops serving (calls in flight are answered) and waits for the server to end.
    pub async fn stop(mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or(Ok(())),
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// How to serve, beyond the engine and its listener.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// TLS (with client certificates required when it has a client verifier, see
    /// [`crate::tls::TlsFiles`]); None: plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Who may call what.
    pub policy: Policy,
    /// Where RPC latencies and refusals are recorded.
    pub rpc_metrics: RpcMetrics,
    /// A plaintext listener serving only `grpc.health.v1` (kubelet's gRPC probe cannot
    /// speak TLS).
    pub health: Option<TcpListener>,
}

/// Serves the engine on `listener`, over TLS when `tls` is given (with client
/// certificates required when it has a client CA), until `shutdown` completes; every
/// caller may call everything.
pub async fn serve_with_tls(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let options = ServeOptions {
        tls,
        ..ServeOptions::default()
    };
    serve_with(engine, listener, options, shutdown).await
}

/// Serves the engine on `listener` as `options` say until `shutdown` completes: the Ipam
/// service, gRPC health (NOT_SERVING while the store does not answer) and reflection.
pub async fn serve_with(
    engine: Arc<Engine>,
    listener: TcpListener,
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let shutdown = shutdown.boxed().shared();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // NOT_SERVING until the first readiness check says otherwise (tonic-health starts the
    // overall status as SERVING).
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    for service in [health::IPAM, health::DEFAULT_NETWORK] {
        health_reporter
            .set_service_status(service, tonic_health::ServingStatus::NotServing)
            .await;
    }
    tokio::spawn(report_health(
        Arc::downgrade(&engine),
        health_reporter,
        shutdown.clone(),
    ));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(danm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let health_only = match options.health {
        Some(health) => {
            let server = tonic::transport::Server::builder()
                .add_service(health_service.clone())
                .serve_with_incoming_shutdown(TcpIncoming::from(health), shutdown.clone());
            Some(tokio::spawn(server))
        }
        None => None,
    };
    let handshake_failures = options.rpc_metrics.tls_handshake_failures.clone();
    let router = tonic::transport::Server::builder()
        .layer(ObserveLayer::new(options.rpc_metrics))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(IpamServer::new(IpamService::with_policy(
            engine,
            options.policy,
        )));
    let served = match options.tls {
        Some(tls) => {
            router
                .serve_with_incoming_shutdown(
                    crate::tls::incoming(listener, tls, handshake_failures),
                    shutdown,
                )
                .await
        }
        None => {
            // No Nagle: small answers must not wait for the client's delayed ACK (40 ms).
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            router
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
        }
    };
    if let Some(task) = health_only {
        if served.is_err() {
            // The probe must not keep answering for a server that is gone.
            task.abort();
        } else {
            task.await.map_err(|_| ServeError::HealthListener)??;
        }
    }
    Ok(served?)
}

/// Keeps the health service's answers in step with the engine (see
/// [`danm_proto::health`]): checked every 5 s, each change logged.
async fn report_health(
    engine: std::sync::Weak<Engine>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let check = async {
        let (mut serving, mut defaults) = (None, None);
        loop {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let ready = match engine.ready().await {
                Ok(()) => true,
                Err(why) => {
                    if serving != Some(false) {
                        tracing::warn!(%why, "not ready: health reports NOT_SERVING");
                    }
                    false
                }
            };
            if ready && serving == Some(false) {
                tracing::info!("ready again: health reports SERVING");
            }
            let default_networks = engine.served_default_networks();
            drop(engine);
            if serving != Some(ready) {
                reporter
                    .set_service_status(health::IPAM, status(ready))
                    .await;
                reporter.set_service_status("", status(ready)).await;
                serving = Some(ready);
            }
            let with_default = ready && !default_networks.is_empty();
            if defaults != Some(with_default) {
                if with_default {
                    tracing::info!(networks = ?default_networks.iter().map(ToString::to_string).collect::<Vec<_>>(), "a default network is served: {} reports SERVING", health::DEFAULT_NETWORK);
                } else if ready {
                    tracing::warn!(
                        "no default network is served (no valid network named default): {} reports NOT_SERVING",
                        health::DEFAULT_NETWORK
                    );
                }
                reporter
                    .set_service_status(health::DEFAULT_NETWORK, status(with_default))
                    .await;
                defaults = Some(with_default);
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    };
    tokio::select! {
        _ = check => {}
        _ = shutdown => {
            // Draining: no caller (a probe, the CNI installer) is told to go ahead.
            for service in ["", health::IPAM, health::DEFAULT_NETWORK] {
                reporter
                    .set_service_status(service, tonic_health::ServingStatus::NotServing)
                    .await;
            }
        }
    }
}

fn status(serving: bool) -> tonic_health::ServingStatus {
    if serving {
        tonic_health::ServingStatus::Serving
    } else {
        tonic_health::ServingStatus::NotServing
    }
}
