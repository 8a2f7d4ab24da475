//! ipamd's TLS: its serving certificate reloaded when the files change (a renewal needs no
//! restart), client certificates required from the CAs given (mutual TLS), and each
//! connection's handshake on a task of its own, so that a slow or silent client holds up
//! no other.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use danm_runtime::tls::ReloadingCert;
use futures::Stream;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;

/// How long a client may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key.
    #[error("--tls-cert/--tls-key")]
    Cert(#[from] danm_runtime::tls::TlsError),
    /// A client CA file cannot be read as PEM.
    #[error("--tls-client-ca {path}")]
    ClientCaRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A client CA file holds no certificate.
    #[error("--tls-client-ca {path}: no CERTIFICATE block")]
    ClientCaEmpty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of a client CA file is not a usable trust anchor.
    #[error("--tls-client-ca {path}: a certificate is not usable as a CA")]
    ClientCaCert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The client certificate verifier cannot be built from the CAs.
    #[error("--tls-client-ca")]
    ClientVerifier(#[source] rustls::server::VerifierBuilderError),
}

/// The server's TLS material, as PEM files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Certificate chain, watched for renewals.
    pub cert: PathBuf,
    /// Its private key, watched with it.
    pub key: PathBuf,
    /// CAs that client certificates must chain to (read once, at start); empty: clients
    /// are not asked for one.
    pub client_ca: Vec<PathBuf>,
}

impl TlsFiles {
    /// The rustls configuration (HTTP/2 only, as gRPC is): the certificate is read now and
    /// again whenever its files change (checked every `reload_every`; a change that does not
    /// load is logged and the previous certificate kept).
    pub fn server_config(
        &self,
        reload_every: Duration,
    ) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let clients = if self.client_ca.is_empty() {
            None
        } else {
            Some(self.client_verifier()?)
        };
        let cert = ReloadingCert::start(
            danm_runtime::tls::TlsFiles {
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
            reload_every,
        )?;
        Ok(Arc::new(cert.server_config(&[b"h2"], clients)))
    }

    /// Requires a client certificate that chains to one of the client CAs.
    fn client_verifier(
        &self,
    ) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
        // Every certificate of every file must be a usable CA: a bundle with a bad one is
        // refused at start, not half-trusted.
        let mut roots = rustls::RootCertStore::empty();
        for path in &self.client_ca {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect())
                .map_err(|source| TlsError::ClientCaRead {
                    path: path.clone(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(TlsError::ClientCaEmpty { path: path.clone() });
            }
            for cert in certs {
                roots.add(cert).map_err(|source| TlsError::ClientCaCert {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(TlsError::ClientVerifier)
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
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = ready.closed() => return,
            };
            // No Nagle: small answers must not wait for the client's delayed ACK (40 ms).
            let _ = tcp.set_nodelay(true);
            let (acceptor, ready, failures) = (acceptor.clone(), ready.clone(), failures.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = ready.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        failures.inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        failures.inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| connections.poll_recv(cx))
}
