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
    /// When the certificate served now expires (Unix seconds), if it could be read.
    not_after: std::sync::atomic::AtomicI64,
}

/// When the first certificate of a chain expires (Unix seconds).
fn not_after_of(key: &CertifiedKey) -> Option<i64> {
    let leaf = key.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    Some(cert.validity().not_after.timestamp())
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
        let loaded = files.load()?;
        let cert = Arc::new(ReloadingCert {
            not_after: std::sync::atomic::AtomicI64::new(not_after_of(&loaded).unwrap_or(0)),
            current: RwLock::new(Arc::new(loaded)),
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
                        watched.not_after.store(
                            not_after_of(&loaded).unwrap_or(0),
                            std::sync::atomic::Ordering::Relaxed,
                        );
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

    /// When the certificate served now expires (Unix seconds); `None` if it could not be
    /// read.
    pub fn not_after(&self) -> Option<i64> {
        Some(self.not_after.load(std::sync::atomic::Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// A Prometheus collector of `<prefix>_certificate_expiry_timestamp_seconds`: when the
    /// served certificate expires (an alert fires 30 days before; see
    /// `deploy/components/monitoring/alerts.yaml`).
    pub fn expiry_collector(self: &Arc<Self>) -> CertificateExpiry {
        CertificateExpiry(Arc::downgrade(self))
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

/// See [`ReloadingCert::expiry_collector`].
#[derive(Debug)]
pub struct CertificateExpiry(std::sync::Weak<ReloadingCert>);

impl prometheus_client::collector::Collector for CertificateExpiry {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let Some(not_after) = self.0.upgrade().and_then(|c| c.not_after()) else {
            return Ok(());
        };
        let gauge = prometheus_client::metrics::gauge::ConstGauge::new(not_after);
        let metric = encoder.encode_descriptor(
            "certificate_expiry_timestamp_seconds",
            "When the TLS certificate served now expires (Unix time)",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// Why client CA files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientCaError {
    /// A file cannot be read as PEM.
    #[error("{path}: cannot read it as PEM")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// A file holds no certificate.
    #[error("{path}: no CERTIFICATE block")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A certificate of a file is not a usable trust anchor.
    #[error("{path}: a certificate is not usable as a CA")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The verifier cannot be built from the CAs.
    #[error("no usable client CA")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

impl ClientCaError {
    /// The file at fault, if one is.
    pub fn path(&self) -> Option<&Path> {
        match self {
            ClientCaError::Read { path, .. }
            | ClientCaError::Empty { path }
            | ClientCaError::Cert { path, .. } => Some(path),
            ClientCaError::Verifier(_) => None,
        }
    }
}

/// Client certificates verified against the CAs of some PEM files, re-read when a file
/// changes: a CA rotation publishes the old and the new CA together in one bundle, then
/// drops the old one, and nothing needs a restart. Every certificate of every file must be
/// a usable CA (a bundle with a bad one is refused, not half-trusted); a changed file that
/// does not load is logged and the previous CAs kept.
pub struct ReloadingClientCas {
    files: Vec<PathBuf>,
    optional: bool,
    current: RwLock<Arc<dyn ClientCertVerifier>>,
}

impl fmt::Debug for ReloadingClientCas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingClientCas")
            .field("files", &self.files)
            .field("optional", &self.optional)
            .finish_non_exhaustive()
    }
}

impl ReloadingClientCas {
    /// Reads `files` now (a failure is fatal) and again every `every` when they change.
    /// `optional`: a client without a certificate is let through the handshake (the
    /// server then decides per request); otherwise the handshake requires one.
    pub fn start(
        files: Vec<PathBuf>,
        optional: bool,
        every: Duration,
    ) -> Result<Arc<ReloadingClientCas>, ClientCaError> {
        let verifier = load_client_cas(&files, optional)?;
        let cas = Arc::new(ReloadingClientCas {
            files,
            optional,
            current: RwLock::new(verifier),
        });
        let watched = Arc::downgrade(&cas);
        let mut seen = stamps(&cas.files);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(watched) = watched.upgrade() else {
                    return;
                };
                let now = stamps(&watched.files);
                if now == seen {
                    continue;
                }
                match load_client_cas(&watched.files, watched.optional) {
                    Ok(verifier) => {
                        *watched.current.write().expect("lock") = verifier;
                        seen = now;
                        tracing::info!(files = ?watched.files, "client CAs reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the changed client CAs do not load yet; keeping the previous ones")
                    }
                }
            }
        });
        Ok(cas)
    }

    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        Arc::clone(&self.current.read().expect("lock"))
    }

    /// Whether `chain` (leaf first) verifies against the CAs now.
    pub fn verifies(&self, chain: &[CertificateDer<'_>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.current()
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .is_ok()
    }
}

fn stamps(files: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    files
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

fn load_client_cas(
    files: &[PathBuf],
    optional: bool,
) -> Result<Arc<dyn ClientCertVerifier>, ClientCaError> {
    let mut roots = rustls::RootCertStore::empty();
    for path in files {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .and_then(|certs| certs.collect())
            .map_err(|source| ClientCaError::Read {
                path: path.clone(),
                source,
            })?;
        if certs.is_empty() {
            return Err(ClientCaError::Empty { path: path.clone() });
        }
        for cert in certs {
            roots.add(cert).map_err(|source| ClientCaError::Cert {
                path: path.clone(),
                source,
            })?;
        }
    }
    let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    );
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    builder.build().map_err(ClientCaError::Verifier)
}

impl ClientCertVerifier for ReloadingClientCas {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        // The hints of the CAs at start: a reload does not change what a client is told
        // (rustls asks for a borrowed list); clients pick their certificate by their own
        // configuration anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}
