//! The gRPC client of ipamd as the plugins use it: one connection per call, a deadline on
//! everything, and gRPC statuses turned into CNI errors a runtime can act on.

use std::time::Duration;

use danm_proto::v1 as pb;
use danm_proto::v1::ipam_client::IpamClient;
use std::path::PathBuf;

use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::protocol::{CniError, ErrorCode, Route};

/// The default ipamd address.
pub const DEFAULT_IPAMD: &str = "http://127.0.0.1:50051";

/// How long connecting to ipamd may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// TLS to ipamd (`ipamdTLS` in a configuration): the CA that signed ipamd's certificate,
/// and the node's identity: the plugin's own certificate and key (the kubelet's), or a
/// token file (the node agent's ServiceAccount token, for ipamd's `--node-identity
/// sa-token`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// `ca`: PEM CA certificate(s) to verify ipamd with.
    pub ca: PathBuf,
    /// `cert`: PEM client certificate (mutual TLS).
    pub cert: Option<PathBuf>,
    /// `key`: its PEM private key.
    pub key: Option<PathBuf>,
    /// `token`: a file holding a bearer token, sent on every call.
    pub token: Option<PathBuf>,
    /// `serverName`: the name ipamd's certificate is checked against (default: the host
    /// of the address).
    pub server_name: Option<String>,
}

impl ClientTls {
    /// Reads `field` (for instance `ipamdTLS`) of a configuration; None when absent.
    pub fn parse(config: &Value, field: &str) -> Result<Option<ClientTls>, CniError> {
        let Some(v) = config.get(field).filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let bad = |what: String| CniError::new(ErrorCode::InvalidConfig, what, String::new());
        let o = v.as_object().ok_or_else(|| {
            bad(format!(
                "{field}: must be an object with ca, cert, key, token, serverName"
            ))
        })?;
        let text = |k: &str| -> Result<Option<String>, CniError> {
            match o.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!(
                    "{field}.{k}: must be a non-empty string, not {other}"
                ))),
            }
        };
        for k in o.keys() {
            if !["ca", "cert", "key", "token", "serverName"].contains(&k.as_str()) {
                return Err(CniError::new(
                    ErrorCode::UnsupportedField,
                    format!("{field}.{k}: unknown field"),
                    "known: ca, cert, key, token, serverName".to_owned(),
                ));
            }
        }
        let ca = text("ca")?.ok_or_else(|| bad(format!("{field}.ca: the CA file is required")))?;
        let (cert, key) = (text("cert")?, text("key")?);
        if cert.is_some() != key.is_some() {
            return Err(bad(format!("{field}: cert and key go together")));
        }
        Ok(Some(ClientTls {
            ca: ca.into(),
            cert: cert.map(PathBuf::from),
            key: key.map(PathBuf::from),
            token: text("token")?.map(PathBuf::from),
            server_name: text("serverName")?,
        }))
    }

    /// As written in a configuration.
    pub fn to_json(&self) -> Value {
        let mut v = json!({"ca": self.ca});
        if let (Some(c), Some(k)) = (&self.cert, &self.key) {
            v["cert"] = json!(c);
            v["key"] = json!(k);
        }
        if let Some(t) = &self.token {
            v["token"] = json!(t);
        }
        if let Some(n) = &self.server_name {
            v["serverName"] = json!(n);
        }
        v
    }

    /// The `authorization` value of the token file, if one is configured.
    fn bearer(&self) -> Result<Option<tonic::metadata::AsciiMetadataValue>, CniError> {
        let Some(path) = &self.token else {
            return Ok(None);
        };
        let token = std::fs::read_to_string(path).map_err(|e| {
            CniError::new(
                ErrorCode::IoFailure,
                format!("cannot read the token file {}", path.display()),
                e.to_string(),
            )
        })?;
        format!("Bearer {}", token.trim())
            .parse()
            .map(Some)
            .map_err(|_| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("{} does not hold a token", path.display()),
                    String::new(),
                )
            })
    }

    fn load(&self) -> Result<ClientTlsConfig, CniError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| {
                CniError::new(
                    ErrorCode::IoFailure,
                    format!("cannot read TLS file {}", p.display()),
                    e.to_string(),
                )
            })
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&self.ca)?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        Ok(config)
    }
}

/// The name this node records as the host of what it attaches (the kernel's host name,
/// as DANM did; with node authorization ipamd records the node's name instead).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// A connection to ipamd whose every call carries this CNI call's request id (and the
/// node's token, when one is configured).
pub type Client = IpamClient<InterceptedService<Channel, CallHeaders>>;

/// The id of this CNI call (one plugin process serves one call), sent to ipamd as
/// `x-request-id` on every RPC so ipamd's log lines of the call carry it, and named in
/// every error from ipamd, which the runtime logs: one id from the node's log to ipamd's.
pub fn request_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        format!("cni-{:x}-{:x}", nanos, std::process::id())
    })
}

/// Adds [`request_id`] to every call, and the node's bearer token if there is one.
#[derive(Clone, Debug, Default)]
pub struct CallHeaders {
    bearer: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::service::Interceptor for CallHeaders {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Ok(id) = request_id().parse() {
            request.metadata_mut().insert("x-request-id", id);
        }
        if let Some(bearer) = &self.bearer {
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
        }
        Ok(request)
    }
}

/// Connects to ipamd at `address` (`http://host:port`, or `https://` with `tls`: TLS
/// settings with an `http://` address are refused), with `timeout` on every call.
pub async fn connect(
    address: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Client, CniError> {
    // Over `http://`, tonic would ignore the TLS settings and send the node's token in
    // the clear.
    if tls.is_some() && !address.starts_with("https://") {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("ipamdTLS is set but ipamd's address {address:?} is not https://"),
            "ipamd's certificate and the node's token are used over TLS only: give an \
             https:// address, or drop ipamdTLS",
        ));
    }
    let headers = CallHeaders {
        bearer: match tls {
            Some(tls) => tls.bearer()?,
            None => None,
        },
    };
    let mut endpoint = Endpoint::from_shared(address.to_owned())
        .map_err(|e| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("ipamd: {address:?} is not a valid address"),
                e.to_string(),
            )
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout);
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls.load()?).map_err(|e| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "ipamdTLS: unusable TLS settings",
                source_chain(&e),
            )
        })?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("ipamd at {address} is unreachable"),
            source_chain(&e),
        )
    })?;
    Ok(IpamClient::with_interceptor(channel, headers))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A gRPC error of ipamd as a CNI error; `what` says what was being done.
pub fn cni_error(what: &str, status: &Status) -> CniError {
    let code = match status.code() {
        // Refused by an ipamd that is stopping (an HTTP/2 GOAWAY), never carried out.
        _ if danm_proto::status::never_carried_out(status) => ErrorCode::TryAgainLater,
        Code::NotFound | Code::InvalidArgument => ErrorCode::InvalidConfig,
        Code::ResourceExhausted => ErrorCode::PoolExhausted,
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
            ErrorCode::TryAgainLater
        }
        _ => ErrorCode::Refused,
    };
    CniError::new(
        code,
        format!("{what}: {}", status.message()),
        format!(
            "ipamd answered {:?} (request id {})",
            status.code(),
            request_id()
        ),
    )
}

/// A network reference from the plugin configuration's words.
pub fn network_ref(kind: &str, namespace: &str, name: &str) -> Result<pb::NetworkRef, CniError> {
    let kind = match kind {
        "" | "DanmNet" => pb::NetworkKind::DanmNet,
        "TenantNetwork" => pb::NetworkKind::TenantNetwork,
        "ClusterNetwork" => pb::NetworkKind::ClusterNetwork,
        other => {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("ipam.kind: {other:?} is not DanmNet, TenantNetwork or ClusterNetwork"),
                String::new(),
            ));
        }
    };
    Ok(pb::NetworkRef {
        kind: kind as i32,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The kind of a network reference, in the words of the configuration.
pub fn kind_name(network: &pb::NetworkRef) -> &'static str {
    match pb::NetworkKind::try_from(network.kind) {
        Ok(pb::NetworkKind::TenantNetwork) => "TenantNetwork",
        Ok(pb::NetworkKind::ClusterNetwork) => "ClusterNetwork",
        _ => "DanmNet",
    }
}

/// Routes of ipamd as CNI routes (those that do not parse are skipped).
pub fn routes(routes: &[pb::Route]) -> Vec<Route> {
    routes
        .iter()
        .filter_map(|r| {
            Some(Route {
                dst: r.destination.parse().ok()?,
                gw: r.gateway.parse().ok(),
            })
        })
        .collect()
}
