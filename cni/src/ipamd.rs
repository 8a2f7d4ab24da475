//! The gRPC client of ipamd as the plugins use it: one connection per call, a deadline on
//! everything, and gRPC statuses turned into CNI errors a runtime can act on.

use std::time::Duration;

use danm_core::NetworkKind;
use danm_proto::v1 as pb;
use std::path::PathBuf;

use danm_proto::client::{self, ClientError, Settings};
use serde_json::{Value, json};
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
pub use danm_proto::client::{Client, Tls as ClientTls};

/// Reads `field` (for instance `ipamdTLS`) of a configuration; None when absent.
pub fn parse_tls(config: &Value, field: &str) -> Result<Option<ClientTls>, CniError> {
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

/// `tls` as written in a configuration.
pub fn tls_json(tls: &ClientTls) -> Value {
    let mut v = json!({"ca": tls.ca});
    if let (Some(c), Some(k)) = (&tls.cert, &tls.key) {
        v["cert"] = json!(c);
        v["key"] = json!(k);
    }
    if let Some(t) = &tls.token {
        v["token"] = json!(t);
    }
    if let Some(n) = &tls.server_name {
        v["serverName"] = json!(n);
    }
    v
}

/// The name this node records as the host of what it attaches (the kernel's host name,
/// as DANM did; with node authorization ipamd records the node's name instead).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

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

/// Connects to ipamd at `address` (`http://host:port`, or `https://` with `tls`: TLS
/// settings with an `http://` address are refused), with `timeout` on every call and
/// [`request_id`] (and the node's token, when configured) on every call.
pub async fn connect(
    address: &str,
    timeout: Duration,
    tls: Option<&ClientTls>,
) -> Result<Client, CniError> {
    let settings = Settings {
        address: address.to_owned(),
        tls: tls.cloned(),
        connect_timeout: CONNECT_TIMEOUT,
        call_timeout: timeout,
        request_id: request_id().to_owned(),
    };
    client::connect(&settings).await.map_err(client_error)
}

/// Checks what a call to ipamd needs on this node, without calling it: the address is
/// valid and the TLS files (CA, certificate and key, token) are readable and well formed.
/// STATUS answers with this alone (see [`crate::ipam_plugin::status`]).
pub fn check_local(address: &str, tls: Option<&ClientTls>) -> Result<(), CniError> {
    let settings = Settings {
        address: address.to_owned(),
        tls: tls.cloned(),
        connect_timeout: CONNECT_TIMEOUT,
        call_timeout: CONNECT_TIMEOUT,
        request_id: request_id().to_owned(),
    };
    client::connect_lazy(&settings)
        .map(drop)
        .map_err(client_error)
}

/// A client error as the CNI error a runtime acts on.
fn client_error(e: ClientError) -> CniError {
    let code = match &e {
        ClientError::Read { .. } => ErrorCode::IoFailure,
        ClientError::Unreachable { .. } => ErrorCode::TryAgainLater,
        ClientError::NotHttps { .. }
        | ClientError::Address { .. }
        | ClientError::Token { .. }
        | ClientError::Pem { .. }
        | ClientError::Tls { .. } => ErrorCode::InvalidConfig,
    };
    // The message says what failed; the details carry the cause (or what to do).
    let (msg, details) = match &e {
        ClientError::Unreachable { address, reason } => {
            (format!("ipamd at {address} is unreachable"), reason.clone())
        }
        ClientError::NotHttps { .. } => (
            format!("ipamdTLS: {e}"),
            "give an https:// address, or drop ipamdTLS".to_owned(),
        ),
        ClientError::Read { source, .. } => (e.to_string(), source.to_string()),
        _ => (e.to_string(), String::new()),
    };
    CniError::new(code, msg, details)
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

/// A network reference from the plugin configuration's words (`ipam.kind`: empty is a
/// DanmNet, as in DANM).
pub fn network_ref(kind: &str, namespace: &str, name: &str) -> Result<pb::NetworkRef, CniError> {
    let kind = match kind {
        "" => NetworkKind::DanmNet,
        other => NetworkKind::parse(other).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                format!("ipam.kind: {other:?} is not DanmNet, TenantNetwork or ClusterNetwork"),
                String::new(),
            )
        })?,
    };
    Ok(pb::NetworkRef {
        kind: pb::NetworkKind::from(kind) as i32,
        namespace: namespace.to_owned(),
        name: name.to_owned(),
    })
}

/// The kind of a network reference, in the words of the configuration.
pub fn kind_name(network: &pb::NetworkRef) -> &'static str {
    danm_proto::network::kind_from_wire(network.kind)
        .unwrap_or(NetworkKind::DanmNet)
        .as_str()
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
