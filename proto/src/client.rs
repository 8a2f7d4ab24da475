//! How every client reaches ipamd, in one place: the address rule (`host:port`, `http://` or
//! `https://`), TLS from PEM files (ipamd's CA; the client's certificate and key, or a bearer
//! token file), a request id and a deadline on every call. The CNI plugins, the cleaner,
//! ipamctl and showalloc all connect through [`connect`] or [`connect_lazy`], so that the
//! rules hold for all of them: TLS settings with an `http://` address are refused (tonic
//! would ignore them and send a node's token in the clear), and every call carries
//! `x-request-id` so that ipamd's log lines of the call can be found from the caller's.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use crate::v1::ipam_client::IpamClient;

/// A connection to ipamd whose every call carries the request id (and the bearer token,
/// when one is configured).
pub type Client = IpamClient<InterceptedService<Channel, CallHeaders>>;

/// TLS to ipamd: the CA that signed ipamd's certificate, and the caller's identity: a client
/// certificate and key (mutual TLS), or a file holding a bearer token, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tls {
    /// PEM CA certificate(s) to verify ipamd with.
    pub ca: PathBuf,
    /// PEM client certificate (mutual TLS); goes with `key`.
    pub cert: Option<PathBuf>,
    /// Its PEM private key.
    pub key: Option<PathBuf>,
    /// A file holding a bearer token, read at connect and sent on every call.
    pub token: Option<PathBuf>,
    /// The name ipamd's certificate is checked against (default: the address's host).
    pub server_name: Option<String>,
}

/// Where ipamd is and how to talk to it.
#[derive(Clone, Debug)]
pub struct Settings {
    /// `host:port`, `http://host:port` or `https://host:port`. Without a scheme, `https://`
    /// when `tls` is set, else `http://`.
    pub address: String,
    /// TLS, for an `https://` address.
    pub tls: Option<Tls>,
    /// How long connecting may take.
    pub connect_timeout: Duration,
    /// How long each call may take.
    pub call_timeout: Duration,
    /// Sent as `x-request-id` on every call.
    pub request_id: String,
}

impl Settings {
    /// `address` without TLS, with the given request id and timeouts of 5 s to connect and
    /// 30 s per call.
    pub fn new(address: &str, request_id: &str) -> Settings {
        Settings {
            address: address.to_owned(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(30),
            request_id: request_id.to_owned(),
        }
    }

    /// The same settings with TLS.
    pub fn with_tls(mut self, tls: Option<Tls>) -> Settings {
        self.tls = tls;
        self
    }

    /// The address with its scheme, as connected to.
    pub fn url(&self) -> Result<String, ClientError> {
        let address = self.address.trim();
        if address.is_empty() {
            return Err(ClientError::Address {
                address: address.to_owned(),
                reason: "empty".into(),
            });
        }
        let url = if address.contains("://") {
            address.to_owned()
        } else if self.tls.is_some() {
            format!("https://{address}")
        } else {
            format!("http://{address}")
        };
        if self.tls.is_some() && !url.starts_with("https://") {
            return Err(ClientError::NotHttps { address: url });
        }
        Ok(url)
    }
}

/// Why a connection to ipamd could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS settings with an address that is not `https://`.
    #[error(
        "TLS settings are given but ipamd's address {address:?} is not https://: ipamd's \
         certificate and a client's token are used over TLS only"
    )]
    NotHttps {
        /// The address given.
        address: String,
    },
    /// The address is not a URL tonic can connect to.
    #[error("{address:?} is not a valid ipamd address: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS or token file could not be read.
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        /// Which file: `CA`, `certificate`, `key` or `token`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A CA or certificate file holds no PEM certificate, or a key file no PEM private key
    /// (an empty CA file would otherwise trust nothing and fail every call, at the call).
    #[error("the {what} file {} holds no PEM {expected}", path.display())]
    Pem {
        /// Which file: `CA`, `certificate` or `key`.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What it should hold: `certificate` or `private key`.
        expected: &'static str,
    },
    /// The token file holds something that cannot be a header value.
    #[error("{} does not hold a token", path.display())]
    Token {
        /// The token file.
        path: PathBuf,
    },
    /// The certificate, key or server name cannot be used.
    #[error("unusable TLS settings: {reason}")]
    Tls {
        /// What tonic said.
        reason: String,
    },
    /// ipamd did not answer the connection.
    #[error("ipamd at {address} is unreachable: {reason}")]
    Unreachable {
        /// The address connected to.
        address: String,
        /// What failed, with its causes.
        reason: String,
    },
}

/// The metadata key of the request id: set by every client (the CNI names one per call),
/// logged by ipamd with every call and sent back in the response.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Adds the request id to every call, and the bearer token if there is one.
#[derive(Clone, Debug, Default)]
pub struct CallHeaders {
    request_id: Option<AsciiMetadataValue>,
    bearer: Option<AsciiMetadataValue>,
}

impl tonic::service::Interceptor for CallHeaders {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(id) = &self.request_id {
            request.metadata_mut().insert(REQUEST_ID_HEADER, id.clone());
        }
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// Connects now: an unreachable ipamd is an error here, not at the first call.
pub async fn connect(settings: &Settings) -> Result<Client, ClientError> {
    let (endpoint, headers, url) = prepare(settings)?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ClientError::Unreachable {
            address: url,
            reason: source_chain(&e),
        })?;
    Ok(IpamClient::with_interceptor(channel, headers))
}

/// Connects at the first call (files and address are still checked now).
pub fn connect_lazy(settings: &Settings) -> Result<Client, ClientError> {
    let (endpoint, headers, _) = prepare(settings)?;
    Ok(IpamClient::with_interceptor(
        endpoint.connect_lazy(),
        headers,
    ))
}

fn prepare(settings: &Settings) -> Result<(Endpoint, CallHeaders, String), ClientError> {
    let url = settings.url()?;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| ClientError::Address {
            address: url.clone(),
            reason: source_chain(&e),
        })?
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.call_timeout);
    let mut headers = CallHeaders {
        request_id: settings.request_id.parse().ok(),
        bearer: None,
    };
    if let Some(tls) = &settings.tls {
        endpoint = endpoint
            .tls_config(tls_config(tls)?)
            .map_err(|e| ClientError::Tls {
                reason: source_chain(&e),
            })?;
        headers.bearer = bearer(tls)?;
    }
    Ok((endpoint, headers, url))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn tls_config(tls: &Tls) -> Result<ClientTlsConfig, ClientError> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read_certificates("CA", &tls.ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
        config = config.identity(Identity::from_pem(
            read_certificates("certificate", cert)?,
            read_key(key)?,
        ));
    }
    if let Some(name) = &tls.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// `path`, which must hold at least one well-formed PEM certificate.
fn read_certificates(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let pem = read(what, path)?;
    let certificates: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certificates {
        Ok(list) if !list.is_empty() => Ok(pem),
        _ => Err(ClientError::Pem {
            what,
            path: path.to_owned(),
            expected: "certificate",
        }),
    }
}

/// `path`, which must hold a well-formed PEM private key.
fn read_key(path: &Path) -> Result<Vec<u8>, ClientError> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject as _;
    let pem = read("key", path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(ClientError::Pem {
            what: "key",
            path: path.to_owned(),
            expected: "private key",
        }),
    }
}

fn bearer(tls: &Tls) -> Result<Option<AsciiMetadataValue>, ClientError> {
    let Some(path) = &tls.token else {
        return Ok(None);
    };
    let token = read("token", path)?;
    let token = String::from_utf8(token).map_err(|_| ClientError::Token { path: path.clone() })?;
    format!("Bearer {}", token.trim())
        .parse()
        .map(Some)
        .map_err(|_| ClientError::Token { path: path.clone() })
}

/// An error with its causes, `: `-separated.
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The flags of a command-line client of ipamd (`--ipamd-ca`, `--ipamd-cert`,
/// `--ipamd-key`, `--ipamd-token`, `--ipamd-server-name`), for `#[command(flatten)]`.
#[cfg(feature = "cli")]
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// PEM CA that signed ipamd's certificate: talk TLS to ipamd (an address without a
    /// scheme becomes https://).
    #[arg(long, env = "DANM_IPAMD_CA")]
    pub ipamd_ca: Option<PathBuf>,
    /// PEM client certificate presented to ipamd (an administrator's, for --admin-clients).
    #[arg(
        long,
        env = "DANM_IPAMD_CERT",
        requires = "ipamd_key",
        requires = "ipamd_ca"
    )]
    pub ipamd_cert: Option<PathBuf>,
    /// PEM key of --ipamd-cert.
    #[arg(long, env = "DANM_IPAMD_KEY", requires = "ipamd_cert")]
    pub ipamd_key: Option<PathBuf>,
    /// File holding a bearer token sent to ipamd on every call.
    #[arg(long, env = "DANM_IPAMD_TOKEN", requires = "ipamd_ca")]
    pub ipamd_token: Option<PathBuf>,
    /// Name ipamd's certificate is checked against (default: the address's host).
    #[arg(long, env = "DANM_IPAMD_SERVER_NAME", requires = "ipamd_ca")]
    pub ipamd_server_name: Option<String>,
}

#[cfg(feature = "cli")]
impl TlsArgs {
    /// The TLS settings the flags give, if any.
    pub fn tls(&self) -> Option<Tls> {
        Some(Tls {
            ca: self.ipamd_ca.clone()?,
            cert: self.ipamd_cert.clone(),
            key: self.ipamd_key.clone(),
            token: self.ipamd_token.clone(),
            server_name: self.ipamd_server_name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_follows_tls_and_tls_is_never_sent_over_http() {
        let plain = Settings::new("127.0.0.1:1", "t");
        assert_eq!(plain.url().unwrap(), "http://127.0.0.1:1");
        let tls = Some(Tls {
            ca: "/ca.pem".into(),
            ..Default::default()
        });
        let secure = plain.clone().with_tls(tls.clone());
        assert_eq!(secure.url().unwrap(), "https://127.0.0.1:1");
        let http = Settings::new("http://127.0.0.1:1", "t").with_tls(tls);
        assert!(matches!(http.url(), Err(ClientError::NotHttps { .. })));
        assert!(Settings::new(" ", "t").url().is_err());
    }

    #[tokio::test]
    async fn a_missing_file_is_named_before_any_connection() {
        let settings = Settings::new("127.0.0.1:1", "t").with_tls(Some(Tls {
            ca: "/nonexistent/ca.pem".into(),
            ..Default::default()
        }));
        let error = connect_lazy(&settings).unwrap_err();
        assert!(
            error.to_string().contains("CA file /nonexistent/ca.pem"),
            "{error}"
        );
    }

    /// An empty or garbage CA file would give an empty root store, which trusts nothing:
    /// every call would fail at the handshake. It is named before any connection instead,
    /// as are a certificate and a key file without their PEM object.
    #[tokio::test]
    async fn files_without_their_pem_objects_are_named_before_any_connection() {
        let dir = std::env::temp_dir().join(format!("danm-proto-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for ca in [&empty, &garbage] {
            let settings = Settings::new("127.0.0.1:1", "t").with_tls(Some(Tls {
                ca: ca.clone(),
                ..Default::default()
            }));
            let error = connect_lazy(&settings).unwrap_err();
            assert!(
                matches!(error, ClientError::Pem { what: "CA", .. })
                    && error.to_string().contains("holds no PEM certificate"),
                "{error}"
            );
        }
        let key_only = Settings::new("127.0.0.1:1", "t").with_tls(Some(Tls {
            ca: empty.clone(),
            cert: Some(empty.clone()),
            key: Some(empty.clone()),
            ..Default::default()
        }));
        assert!(matches!(
            connect_lazy(&key_only),
            Err(ClientError::Pem { what: "CA", .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
