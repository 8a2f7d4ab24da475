//! A serving certificate reloaded when its files change (cert-manager and danm-certs renew
//! it in place): every new TLS handshake gets the newest certificate, no restart needed.
//! The webhook and ipamd serve with it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no PEM of the expected type.
    #[error("cannot read {what} from {path}: {message}")]
    Read {
        /// `certificate` or `private key`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The key is of a type rustls cannot sign with.
    #[error("the private key in {path} is not usable: {message}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
}

/// The certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl TlsFiles {
    fn load(&self) -> Result<CertifiedKey, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .and_then(|i| i.collect())
            .map_err(|e| TlsError::Read {
                what: "certificate",
                path: self.cert.clone(),
                message: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Read {
                what: "certificate",
                path: self.cert.clone(),
                message: "no CERTIFICATE block".into(),
            });
        }
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|e| TlsError::Read {
            what: "private key",
            path: self.key.clone(),
            message: e.to_string(),
        })?;
        let signer = any_supported_type(&key).map_err(|e| TlsError::Key {
            path: self.key.clone(),
            message: e.to_string(),
        })?;
        let certified = CertifiedKey::new(certs, signer);
        // A renewal writes two files: between them, the pair does not match.
        match certified.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                Ok(certified)
            }
            Err(e) => Err(TlsError::Key {
                path: self.key.clone(),
                message: format!(
                    "it does not match the certificate in {}: {e}",
                    self.cert.display()
                ),
            }),
        }
    }

    fn stamp(&self) -> Option<(SystemTime, u64, SystemTime, u64)> {
        let meta = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let (cm, cl) = meta(&self.cert)?;
        let (km, kl) = meta(&self.key)?;
        Some((cm?, cl, km?, kl))
    }
}

/// Serves the newest certificate; see the module overview.
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read().expect("lock")))
    }
}

impl ReloadingCert {
    /// Loads the files (a failure here is fatal: there is nothing to serve with) and
    /// watches them every `every`; a change that does not load is logged and the previous
    /// certificate kept.
    pub fn start(files: TlsFiles, every: Duration) -> Result<Arc<ReloadingCert>, TlsError> {
        let cert = Arc::new(ReloadingCert {
            current: RwLock::new(Arc::new(files.load()?)),
            files,
        });
        // The watcher holds the certificate weakly: it ends once nothing serves with it.
        let watched = Arc::downgrade(&cert);
        let mut seen = cert.files.stamp();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(watched) = watched.upgrade() else {
                    return;
                };
                let now = watched.files.stamp();
                if now == seen {
                    continue;
                }
                match watched.files.load() {
                    Ok(loaded) => {
                        *watched.current.write().expect("lock") = Arc::new(loaded);
                        seen = now;
                        tracing::info!(cert = %watched.files.cert.display(), "serving certificate reloaded");
                    }
                    // Half-written (a renewal in progress): try again next time.
                    Err(e) => {
                        tracing::warn!(error = %e, "the changed certificate does not load yet; keeping the previous one")
                    }
                }
            }
        });
        Ok(cert)
    }

    /// A rustls server configuration serving this certificate with these ALPN protocols
    /// (e.g. `h2`), asking clients for a certificate that `clients` accepts if given.
    pub fn server_config(
        self: &Arc<Self>,
        alpn: &[&[u8]],
        clients: Option<Arc<dyn ClientCertVerifier>>,
    ) -> rustls::ServerConfig {
        let builder = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
        let builder = match clients {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config =
            builder.with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        config
    }
}
