//! ipamd's TLS: its serving certificate reloaded when the files change (a renewal needs no
//! restart), client certificates required from the CAs given (mutual TLS), and each
//! connection's handshake on a task of its own, so that a slow or silent client holds up
//! no other.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use danm_runtime::accept::{accept, handshake};
use danm_runtime::tls::{ClientCaError, ReloadingCert, ReloadingClientCas};
use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key.
    #[error("--tls-cert/--tls-key")]
    Cert(#[from] danm_runtime::tls::TlsError),
    /// The client CAs.
    #[error("--tls-client-ca {}", .0.path().map(|p| p.display().to_string()).unwrap_or_default())]
    ClientCa(#[from] ClientCaError),
}

/// The server's TLS material, as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, watched for renewals.
    pub cert: PathBuf,
    /// Its private key, watched with it.
    pub key: PathBuf,
    /// CAs that client certificates must chain to, watched for changes (a CA rotation
    /// publishes old and new together); empty: clients are not asked for one.
    pub client_ca: Vec<PathBuf>,
    /// Whether a client may come without a certificate (nodes that send a token instead);
    /// a certificate it presents must still chain to `client_ca`.
    pub client_cert_optional: bool,
}

impl TlsFiles {
    /// The rustls configuration (HTTP/2 only, as gRPC is): the certificate and the client
    /// CAs are read now and again whenever their files change (checked every
    /// `reload_every`; a change that does not load is logged and the previous one kept).
    pub fn server_config(
        &self,
        reload_every: Duration,
    ) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), TlsError> {
        let clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>> =
            if self.client_ca.is_empty() {
                None
            } else {
                Some(ReloadingClientCas::start(
                    self.client_ca.clone(),
                    self.client_cert_optional,
                    reload_every,
                )?)
            };
        let cert = ReloadingCert::start(
            danm_runtime::tls::TlsFiles {
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
            reload_every,
        )?;
        Ok((Arc::new(cert.server_config(&[b"h2"], clients)), cert))
    }
}

/// The connections of `listener` once their TLS handshake is done; a handshake that fails
/// or times out is counted in `failures`. Ends (closing the listener) when the stream is
/// dropped: the server has stopped taking connections.
pub(crate) fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    failures: prometheus_client::metrics::counter::Counter,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, std::io::Error>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let (ready, mut connections) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = accept(&listener) => accepted,
                _ = ready.closed() => return,
            };
            let (acceptor, ready, failures) = (acceptor.clone(), ready.clone(), failures.clone());
            tokio::spawn(async move {
                if let Some(tls) = handshake(&acceptor, tcp, peer, &failures).await {
                    let _ = ready.send(Ok(tls)).await;
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| connections.poll_recv(cx))
}
