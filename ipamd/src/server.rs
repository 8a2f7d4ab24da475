//! Serving: the Ipam service, the standard gRPC health service and server reflection.

use std::sync::Arc;

use danm_proto::v1::ipam_server::IpamServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::engine::Engine;
use crate::service::IpamService;

/// Why serving failed or could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A TLS file cannot be read.
    #[error("cannot read TLS file {path}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The reflection service could not be built from the descriptors.
    #[error("gRPC reflection")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The gRPC server failed (TLS configuration, transport).
    #[error("gRPC server")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves the engine on `listener` (plain HTTP/2) until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with_tls(engine, listener, None, shutdown).await
}

/// The server's TLS material, as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: std::path::PathBuf,
    /// Private key.
    pub key: std::path::PathBuf,
    /// CA that client certificates must chain to; None: clients are not asked for one.
    pub client_ca: Option<std::path::PathBuf>,
}

impl TlsFiles {
    /// Reads the files into tonic's configuration, naming the file that cannot be read.
    pub fn load(&self) -> Result<tonic::transport::ServerTlsConfig, ServeError> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|source| ServeError::TlsFile {
                path: p.to_owned(),
                source,
            })
        };
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(read(&self.cert)?, read(&self.key)?));
        if let Some(ca) = &self.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// Serves the engine on `listener`, over TLS when `tls` is given (with client
/// certificates required when it has a client CA), until `shutdown` completes.
pub async fn serve_with_tls(
    engine: Arc<Engine>,
    listener: TcpListener,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IpamServer<IpamService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(danm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(IpamServer::new(IpamService::new(engine)))
        // No Nagle: small answers must not wait for the client's delayed ACK (40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}
