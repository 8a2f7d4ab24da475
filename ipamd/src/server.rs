//! Serving: the Ipam service, the standard gRPC health service and server reflection.

use std::sync::Arc;

use danm_proto::v1::ipam_server::IpamServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::engine::Engine;
use crate::service::IpamService;

/// Serves the engine on `listener` until `shutdown` completes.
pub async fn serve(
    engine: Arc<Engine>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IpamServer<IpamService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(danm_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    tonic::transport::Server::builder()
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
