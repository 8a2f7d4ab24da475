//! Serving: the Ipam service, the standard gRPC health service and server reflection.

use std::sync::Arc;

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
    health_reporter
        .set_service_status(IPAM_SERVICE_NAME, tonic_health::ServingStatus::NotServing)
        .await;
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

/// Keeps the health service's answer in step with the engine: SERVING while the store
/// answers and no network waits for its migration, NOT_SERVING otherwise.
async fn report_health(
    engine: std::sync::Weak<Engine>,
    reporter: tonic_health::server::HealthReporter,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let check = async {
        let mut serving = None;
        loop {
            let Some(engine) = engine.upgrade() else {
                return;
            };
            let now = match engine.ready().await {
                Ok(()) => true,
                Err(why) => {
                    if serving != Some(false) {
                        tracing::warn!(%why, "not ready: health reports NOT_SERVING");
                    }
                    false
                }
            };
            drop(engine);
            if serving != Some(now) {
                let status = if now {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                reporter.set_service_status(IPAM_SERVICE_NAME, status).await;
                reporter.set_service_status("", status).await;
                serving = Some(now);
            }
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        }
    };
    tokio::select! {
        _ = check => {}
        _ = shutdown => reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await,
    }
}

/// The Ipam service's name in the health service.
const IPAM_SERVICE_NAME: &str = "danm.ipam.v1.Ipam";
