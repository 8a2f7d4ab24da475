//! The CNI protocol (containernetworking/cni SPEC.md, version 1.1.0): versions and their
//! negotiation, the request a runtime sends (environment plus configuration on stdin), the
//! result in the shape of each version, and the error JSON with the spec's codes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde_json::{Value, json};

/// The versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The spec's error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: incompatible CNI version.
    IncompatibleVersion = 1,
    /// 2: unsupported field in the network configuration.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: invalid necessary environment variables.
    InvalidEnvironment = 4,
    /// 5: I/O failure.
    IoFailure = 5,
    /// 6: failed to decode content.
    DecodeFailure = 6,
    /// 7: invalid network configuration.
    InvalidConfig = 7,
    /// 11: try again later.
    TryAgainLater = 11,
    /// 50: the plugin is not available (STATUS).
    NotAvailable = 50,
    /// 100: plugin-specific: no free address left in the pool.
    PoolExhausted = 100,
    /// 101: plugin-specific: the request was refused by ipamd (unknown network, address in
    /// use, tenant not allowed...).
    Refused = 101,
    /// 102: plugin-specific: building an interface failed.
    InterfaceFailed = 102,
    /// 103: plugin-specific: a delegated plugin failed.
    DelegateFailed = 103,
}

/// A CNI error: code, message, details; printed as the spec's error JSON.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg}{}", if details.is_empty() { String::new() } else { format!(": {details}") })]
pub struct CniError {
    /// The code.
    pub code: ErrorCode,
    /// A short message.
    pub msg: String,
    /// More about the cause.
    pub details: String,
}

impl CniError {
    /// A new error.
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error JSON of the spec.
    pub fn to_json(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "code": self.code as u32,
            "msg": self.msg,
            "details": self.details,
        })
    }
}

/// The CNI operation (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach.
    Del,
    /// Verify.
    Check,
    /// Report versions.
    Version,
    /// Is the plugin ready (1.1).
    Status,
    /// Release everything not in the valid set (1.1).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(text: &str) -> Option<Command> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }
}

/// Everything a runtime passes to one plugin call.
#[derive(Clone, Debug)]
pub struct Request {
    /// The operation.
    pub command: Command,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`: the path of the container's network namespace.
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`, split into keys and values.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`: where plugins are.
    pub path: Vec<PathBuf>,
    /// The network configuration (stdin).
    pub config: Value,
    /// The version the result is written in (negotiated).
    pub version: String,
}

impl Request {
    /// A `CNI_ARGS` value.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// The pod namespace, from `K8S_POD_NAMESPACE` (`default` outside Kubernetes).
    pub fn pod_namespace(&self) -> &str {
        self.arg("K8S_POD_NAMESPACE").unwrap_or("default")
    }

    /// `prevResult`, when the runtime sent one.
    pub fn prev_result(&self) -> Option<CniResult> {
        self.config.get("prevResult").map(CniResult::from_json)
    }

    /// Builds the request from the environment `env` and the configuration `stdin`.
    pub fn parse(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Request, CniError> {
        let command_text = env("CNI_COMMAND").unwrap_or_default();
        let command = Command::parse(&command_text).ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_COMMAND is not one of ADD, DEL, CHECK, VERSION, STATUS, GC",
                format!("CNI_COMMAND={command_text:?}"),
            )
        })?;
        let config: Value = if stdin.iter().all(u8::is_ascii_whitespace) {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(stdin).map_err(|e| {
                CniError::new(
                    ErrorCode::DecodeFailure,
                    "the network configuration on stdin is not valid JSON",
                    e.to_string(),
                )
            })?
        };
        if !config.is_object() {
            return Err(CniError::new(
                ErrorCode::DecodeFailure,
                "the network configuration on stdin must be a JSON object",
                String::new(),
            ));
        }
        let version = negotiate(&config, command)?;
        let needs = |name: &str| -> Result<String, CniError> {
            env(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidEnvironment,
                    format!("{name} must be set for {command_text}"),
                    String::new(),
                )
            })
        };
        let (container_id, ifname, netns) = match command {
            Command::Add | Command::Check => (
                needs("CNI_CONTAINERID")?,
                needs("CNI_IFNAME")?,
                needs("CNI_NETNS")?,
            ),
            // DEL may come after the namespace is gone.
            Command::Del => (
                needs("CNI_CONTAINERID")?,
                needs("CNI_IFNAME")?,
                env("CNI_NETNS").unwrap_or_default(),
            ),
            _ => Default::default(),
        };
        let args = parse_args(&env("CNI_ARGS").unwrap_or_default())?;
        let path = env("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Request {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
            config,
            version,
        })
    }
}

/// Parses `CNI_ARGS` (`K1=V1;K2=V2`).
pub fn parse_args(text: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut args = BTreeMap::new();
    for pair in text.split(';').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                "CNI_ARGS must be KEY=VALUE pairs separated by ';'",
                format!("{pair:?} has no '='"),
            )
        })?;
        args.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    Ok(args)
}

/// The version of the answer: the configuration's `cniVersion`, which the runtime chose.
/// `cniVersions` is the runtime's to read, not the plugin's: libcni picks from it for a
/// `.conflist` and sets `cniVersion` to its pick, and for a single `.conf` (DANM's
/// `00-danm.conf`) it ignores it and passes the file's bytes, `cniVersions` included, with
/// the file's `cniVersion`. A plugin that answered from `cniVersions` would answer a
/// version the runtime never asked for (containerd 1.6 then fails every sandbox with
/// "unsupported CNI result version"). Only without `cniVersion` is the highest supported
/// entry of `cniVersions` taken.
pub fn negotiate(config: &Value, command: Command) -> Result<String, CniError> {
    if config.get("cniVersion").is_none()
        && let Some(list) = config.get("cniVersions").and_then(Value::as_array)
    {
        let best = list
            .iter()
            .filter_map(Value::as_str)
            .filter(|v| SUPPORTED_VERSIONS.contains(v))
            .max_by_key(|v| version_key(v));
        return best
            .map(str::to_owned)
            .ok_or_else(|| incompatible(&json!(list).to_string()));
    }
    match config.get("cniVersion").and_then(Value::as_str) {
        Some(v) if SUPPORTED_VERSIONS.contains(&v) => Ok(v.to_owned()),
        Some(v) if command == Command::Version => Ok(v.to_owned()),
        Some(v) => Err(incompatible(v)),
        None if command == Command::Version => Ok("1.1.0".to_owned()),
        None => Err(CniError::new(
            ErrorCode::InvalidConfig,
            "cniVersion is missing from the network configuration",
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        )),
    }
}

fn incompatible(asked: &str) -> CniError {
    CniError::new(
        ErrorCode::IncompatibleVersion,
        format!("CNI version {asked} is not supported"),
        format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
    )
}

fn version_key(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

/// The VERSION answer.
pub fn version_reply(version: &str) -> Value {
    json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS})
}

/// An interface of a result.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Interface {
    /// Name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// The namespace path (empty: the host).
    pub sandbox: String,
}

/// An address of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpConfig {
    /// Address with prefix.
    pub address: IpNet,
    /// Gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Index into the interfaces.
    pub interface: Option<usize>,
}

/// A route of a result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Gateway (none: the default of the interface).
    pub gw: Option<IpAddr>,
}

/// A result, in the model of 1.1.0; written in any supported version.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CniResult {
    /// Interfaces.
    pub interfaces: Vec<Interface>,
    /// Addresses.
    pub ips: Vec<IpConfig>,
    /// Routes.
    pub routes: Vec<Route>,
    /// DNS, as given.
    pub dns: Value,
}

impl CniResult {
    /// Reads a result of any supported version (unknown parts are ignored).
    pub fn from_json(v: &Value) -> CniResult {
        let interfaces = v
            .get("interfaces")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|i| Interface {
                        name: str_field(i, "name"),
                        mac: str_field(i, "mac"),
                        sandbox: str_field(i, "sandbox"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let ips = v
            .get("ips")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|i| {
                        Some(IpConfig {
                            address: str_field(i, "address").parse().ok()?,
                            gateway: str_field(i, "gateway").parse().ok(),
                            interface: i
                                .get("interface")
                                .and_then(Value::as_u64)
                                .map(|n| n as usize),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let routes = v
            .get("routes")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|r| {
                        Some(Route {
                            dst: str_field(r, "dst").parse().ok()?,
                            gw: str_field(r, "gw").parse().ok(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        CniResult {
            interfaces,
            ips,
            routes,
            dns: v.get("dns").cloned().unwrap_or(Value::Null),
        }
    }

    /// Appends `other`, shifting its interface indexes.
    pub fn merge(&mut self, other: CniResult) {
        let base = self.interfaces.len();
        self.interfaces.extend(other.interfaces);
        self.ips.extend(other.ips.into_iter().map(|mut ip| {
            ip.interface = ip.interface.map(|i| i + base);
            ip
        }));
        self.routes.extend(other.routes);
        if self.dns.is_null() {
            self.dns = other.dns;
        }
    }

    /// The result in the shape of `version`: 0.3.x and 0.4.0 carry `version` on each
    /// address; 1.x drops it.
    pub fn to_json(&self, version: &str) -> Value {
        let legacy = version.starts_with("0.");
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut o = json!({"address": ip.address.to_string()});
                if legacy {
                    o["version"] = json!(if ip.address.addr().is_ipv4() {
                        "4"
                    } else {
                        "6"
                    });
                }
                if let Some(gw) = ip.gateway {
                    o["gateway"] = json!(gw.to_string());
                }
                if let Some(i) = ip.interface {
                    o["interface"] = json!(i);
                }
                o
            })
            .collect();
        let routes: Vec<Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut o = json!({"dst": r.dst.to_string()});
                if let Some(gw) = r.gw {
                    o["gw"] = json!(gw.to_string());
                }
                o
            })
            .collect();
        let mut out = json!({"cniVersion": version, "ips": ips});
        if !self.interfaces.is_empty() {
            out["interfaces"] = json!(
                self.interfaces
                    .iter()
                    .map(|i| {
                        let mut o = json!({"name": i.name});
                        if !i.mac.is_empty() {
                            o["mac"] = json!(i.mac);
                        }
                        if !i.sandbox.is_empty() {
                            o["sandbox"] = json!(i.sandbox);
                        }
                        o
                    })
                    .collect::<Vec<_>>()
            );
        }
        if !routes.is_empty() {
            out["routes"] = json!(routes);
        }
        out["dns"] = if self.dns.is_null() {
            json!({})
        } else {
            self.dns.clone()
        };
        out
    }
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn parses_a_request_with_cni_args() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u",
            ),
        ]);
        let r = Request::parse(&e, br#"{"cniVersion":"0.4.0","name":"n","type":"danm"}"#).unwrap();
        assert_eq!(r.command, Command::Add);
        assert_eq!(r.pod_namespace(), "ns");
        assert_eq!(r.arg("K8S_POD_UID"), Some("u"));
        assert_eq!(r.arg("K8S_POD_INFRA_CONTAINER_ID"), Some("c1"));
        assert_eq!(r.path.len(), 2);
        assert_eq!(r.version, "0.4.0");
    }

    #[test]
    fn errors_name_their_cause_with_the_spec_code() {
        let add = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "c"),
            ("CNI_IFNAME", "eth0"),
        ];
        let e = Request::parse(&env(&add), b"{").unwrap_err();
        assert_eq!(e.code, ErrorCode::DecodeFailure);
        let e = Request::parse(&env(&add), br#"{"cniVersion":"1.1.0"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        assert!(e.msg.contains("CNI_NETNS"), "{e}");
        let e = Request::parse(&env(&[("CNI_COMMAND", "ADDD")]), b"{}").unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidEnvironment);
        let e = negotiate(&json!({"cniVersion": "0.2.0"}), Command::Add).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        assert!(e.to_string().contains("0.2.0"), "{e}");
        let e = parse_args("K8S_POD_NAME").unwrap_err();
        assert!(e.details.contains("K8S_POD_NAME"));
        let j = e.to_json("1.1.0");
        assert_eq!(j["code"], 4);
        assert_eq!(j["cniVersion"], "1.1.0");
    }

    #[test]
    fn answers_the_version_the_runtime_chose() {
        // What containerd 1.6 passes for a `.conf` listing cniVersions: the file's
        // cniVersion is the one it parses results of.
        let c = json!({"cniVersion": "1.0.0", "cniVersions": ["0.4.0", "1.0.0", "1.1.0", "9.9.9"]});
        assert_eq!(negotiate(&c, Command::Add).unwrap(), "1.0.0");
        let c = json!({"cniVersions": ["0.3.1", "1.0.0"]});
        assert_eq!(negotiate(&c, Command::Add).unwrap(), "1.0.0");
        for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert_eq!(
                negotiate(&json!({"cniVersion": v}), Command::Add).unwrap(),
                v
            );
        }
    }

    #[test]
    fn the_installed_configurations_are_answered_in_their_own_version() {
        let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
        for template in [
            "base/cni/00-danm.conf.template",
            "components/node-token/00-danm.conf.template",
        ] {
            let text = std::fs::read_to_string(deploy.join(template)).unwrap();
            let conf: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                negotiate(&conf, Command::Add).unwrap(),
                conf["cniVersion"].as_str().unwrap(),
                "{template}"
            );
        }
    }

    #[test]
    fn results_convert_to_each_version() {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "02:00:00:00:00:01".into(),
                sandbox: "/var/run/netns/x".into(),
            }],
            ips: vec![
                IpConfig {
                    address: "10.0.0.5/24".parse().unwrap(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig {
                    address: "2001:db8::5/64".parse().unwrap(),
                    gateway: None,
                    interface: Some(0),
                },
            ],
            routes: vec![Route {
                dst: "0.0.0.0/0".parse().unwrap(),
                gw: Some("10.0.0.1".parse().unwrap()),
            }],
            dns: Value::Null,
        };
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["ips"][1]["version"], "6");
        let new = r.to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["cniVersion"], "1.1.0");
        assert_eq!(new["interfaces"][0]["sandbox"], "/var/run/netns/x");
        assert_eq!(
            CniResult::from_json(&old),
            CniResult {
                dns: json!({}),
                ..r.clone()
            }
        );
        let mut merged = r.clone();
        merged.merge(r);
        assert_eq!(merged.ips[2].interface, Some(1));
    }
}
