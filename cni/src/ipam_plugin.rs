//! `danm-ipam`: a standard CNI IPAM plugin over ipamd, for any CNI configuration:
//!
//! ```json
//! "ipam": {"type": "danm-ipam", "ipamd": "http://127.0.0.1:50051",
//!          "network": "internal", "kind": "DanmNet", "namespace": "default",
//!          "ip": "dynamic", "ip6": ""}
//! ```
//!
//! The owner of the address is the attachment (`CNI_CONTAINERID`, `CNI_IFNAME`), so a
//! repeated ADD returns the same address and DEL frees exactly what this attachment holds.

use std::time::Duration;

use async_trait::async_trait;
use danm_proto::v1 as pb;
use serde_json::Value;

use crate::exec::Plugin;
use crate::ipamd::{self, DEFAULT_IPAMD};
use crate::protocol::{CniError, CniResult, ErrorCode, IpConfig, Request};

/// How long one call to ipamd may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(8);

/// The `ipam` section of a configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpamConfig {
    /// ipamd's address.
    pub ipamd: String,
    /// The network.
    pub network: pb::NetworkRef,
    /// IPv4 request: `dynamic`, `none`, a static address or empty.
    pub ip: String,
    /// IPv6 request.
    pub ip6: String,
    /// `ipamdTLS`: TLS to ipamd.
    pub tls: Option<ipamd::ClientTls>,
}

impl IpamConfig {
    /// Reads the `ipam` section; a DanmNet or TenantNetwork without `namespace` is the pod's.
    pub fn parse(config: &Value, pod_namespace: &str) -> Result<IpamConfig, CniError> {
        let ipam = config
            .get("ipam")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                CniError::new(
                    ErrorCode::InvalidConfig,
                    "ipam: section missing",
                    String::new(),
                )
            })?;
        let text = |key: &str| -> Result<String, CniError> {
            match ipam.get(key) {
                None | Some(Value::Null) => Ok(String::new()),
                Some(Value::String(s)) => Ok(s.clone()),
                Some(other) => Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("ipam.{key}: must be a string, not {other}"),
                    String::new(),
                )),
            }
        };
        for key in ipam.keys() {
            if ![
                "type",
                "ipamd",
                "ipamdTLS",
                "network",
                "kind",
                "namespace",
                "ip",
                "ip6",
            ]
            .contains(&key.as_str())
            {
                return Err(CniError::new(
                    ErrorCode::UnsupportedField,
                    format!("ipam.{key}: unknown field"),
                    "danm-ipam knows type, ipamd, ipamdTLS, network, kind, namespace, ip, ip6"
                        .to_owned(),
                ));
            }
        }
        let name = text("network")?;
        if name.is_empty() {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                "ipam.network: the network to allocate from is required",
                String::new(),
            ));
        }
        let kind = text("kind")?;
        let mut namespace = text("namespace")?;
        if namespace.is_empty() && kind != "ClusterNetwork" {
            namespace = pod_namespace.to_owned();
        }
        let (mut ip, ip6) = (text("ip")?, text("ip6")?);
        if ip.is_empty() && ip6.is_empty() {
            ip = "dynamic".to_owned();
        }
        let address = text("ipamd")?;
        Ok(IpamConfig {
            ipamd: if address.is_empty() {
                DEFAULT_IPAMD.to_owned()
            } else {
                address
            },
            network: ipamd::network_ref(&kind, &namespace, &name)?,
            ip,
            ip6,
            tls: ipamd::parse_tls(&Value::Object(ipam.clone()), "ipamdTLS")
                .map_err(|e| CniError::new(e.code, format!("ipam.{}", e.msg), e.details))?,
        })
    }
}

/// The plugin.
#[derive(Debug, Default)]
pub struct DanmIpam;

fn owner(request: &Request) -> pb::Owner {
    pb::Owner {
        container_id: request.container_id.clone(),
        ifname: request.ifname.clone(),
        pod_namespace: request.pod_namespace().to_owned(),
        pod_name: request.arg("K8S_POD_NAME").unwrap_or_default().to_owned(),
        pod_uid: request.arg("K8S_POD_UID").unwrap_or_default().to_owned(),
        netns: request.netns.clone(),
        host: ipamd::host_name(),
    }
}

fn ip_config(address: &str) -> Result<Option<IpConfig>, CniError> {
    if address.is_empty() || address == "none" {
        return Ok(None);
    }
    let parsed = address.parse().map_err(|e| {
        CniError::new(
            ErrorCode::Refused,
            format!("ipamd returned {address:?}, not an address with prefix"),
            format!("{e}"),
        )
    })?;
    Ok(Some(IpConfig {
        address: parsed,
        gateway: None,
        interface: None,
    }))
}

#[async_trait]
impl Plugin for DanmIpam {
    async fn add(&self, request: &Request) -> Result<CniResult, CniError> {
        let config = IpamConfig::parse(&request.config, request.pod_namespace())?;
        let mut client = ipamd::connect(&config.ipamd, CALL_TIMEOUT, config.tls.as_ref()).await?;
        let reply = client
            .allocate(pb::AllocateRequest {
                network: Some(config.network.clone()),
                owner: Some(owner(request)),
                ip: config.ip.clone(),
                ip6: config.ip6.clone(),
            })
            .await
            .map_err(|s| ipamd::cni_error(&format!("allocation on {}", config.network.name), &s))?
            .into_inner();
        let mut result = CniResult::default();
        result.ips.extend(ip_config(&reply.ip)?);
        result.ips.extend(ip_config(&reply.ip6)?);
        result.routes = ipamd::routes(&reply.routes);
        result.routes.extend(ipamd::routes(&reply.routes6));
        Ok(result)
    }

    async fn del(&self, request: &Request) -> Result<(), CniError> {
        let config = IpamConfig::parse(&request.config, request.pod_namespace())?;
        let mut client = ipamd::connect(&config.ipamd, CALL_TIMEOUT, config.tls.as_ref()).await?;
        client
            .release(pb::ReleaseRequest {
                network: Some(config.network.clone()),
                owner: Some(owner(request)),
            })
            .await
            .map_err(|s| ipamd::cni_error(&format!("release on {}", config.network.name), &s))?;
        Ok(())
    }

    async fn check(&self, request: &Request) -> Result<(), CniError> {
        let config = IpamConfig::parse(&request.config, request.pod_namespace())?;
        let prev = request.prev_result().unwrap_or_default();
        let held = |v4: bool| {
            prev.ips
                .iter()
                .find(|ip| ip.address.addr().is_ipv4() == v4)
                .map(|ip| ip.address.to_string())
                .unwrap_or_default()
        };
        let mut client = ipamd::connect(&config.ipamd, CALL_TIMEOUT, config.tls.as_ref()).await?;
        client
            .check(pb::CheckRequest {
                network: Some(config.network.clone()),
                owner: Some(owner(request)),
                ip: held(true),
                ip6: held(false),
            })
            .await
            .map_err(|s| ipamd::cni_error(&format!("check on {}", config.network.name), &s))?;
        Ok(())
    }

    async fn status(&self, request: &Request) -> Result<(), CniError> {
        let config = IpamConfig::parse(&request.config, "default")?;
        status(&config.ipamd, config.tls.as_ref()).await
    }

    async fn gc(&self, request: &Request) -> Result<(), CniError> {
        let config = IpamConfig::parse(&request.config, "default")?;
        let valid = valid_attachments(&request.config)?;
        gc(
            &config.ipamd,
            config.tls.as_ref(),
            valid,
            Some(config.network),
        )
        .await
    }
}

/// STATUS: whether this node can serve ADD as far as the node itself goes. The
/// configuration parsed (the caller did that), ipamd's address is valid and the TLS files
/// are readable and well formed; otherwise code 50 with what is wrong.
///
/// ipamd itself is deliberately not asked. ipamd is one service for the whole cluster, so
/// a STATUS that failed while ipamd was down would turn every node's NetworkReady false at
/// once (containerd 2.x asks on every CRI status, kubelet every 5 s), and the nodes would go
/// NotReady and their pods could be evicted, for an outage that running pods do not feel.
/// New pods wait instead: their ADD fails with code 11 ("try again later") and an event
/// that names ipamd, and kubelet retries. Peers decide the same way for a cluster-wide
/// dependency: Calico's plugin has no STATUS at all, and Multus asks only node-local
/// things (its readiness file and the primary network's delegate), while Cilium's asks its
/// agent, which runs on the node. docs/cni.md has the evidence.
pub async fn status(address: &str, tls: Option<&ipamd::ClientTls>) -> Result<(), CniError> {
    ipamd::check_local(address, tls).map_err(|e| {
        CniError::new(
            ErrorCode::NotAvailable,
            format!("danm cannot call ipamd from this node: {}", e.msg),
            e.details,
        )
    })
}

/// `cni.dev/valid-attachments` of a GC request.
pub fn valid_attachments(config: &Value) -> Result<Vec<pb::Attachment>, CniError> {
    let Some(list) = config.get("cni.dev/valid-attachments") else {
        return Ok(Vec::new());
    };
    let list = list.as_array().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "cni.dev/valid-attachments must be a list",
            String::new(),
        )
    })?;
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            let field = |k: &str| {
                a.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            };
            let (container_id, ifname) = (field("containerID"), field("ifname"));
            if container_id.is_empty() || ifname.is_empty() {
                return Err(CniError::new(
                    ErrorCode::InvalidConfig,
                    format!("cni.dev/valid-attachments[{i}]: containerID and ifname are required"),
                    String::new(),
                ));
            }
            Ok(pb::Attachment {
                container_id,
                ifname,
            })
        })
        .collect()
}

/// GC against ipamd: everything this node attached (on `network`, if given) that is not in
/// `valid` is released.
pub async fn gc(
    address: &str,
    tls: Option<&ipamd::ClientTls>,
    valid: Vec<pb::Attachment>,
    network: Option<pb::NetworkRef>,
) -> Result<(), CniError> {
    let mut client = ipamd::connect(address, CALL_TIMEOUT, tls).await?;
    client
        .gc(pb::GcRequest {
            valid,
            network,
            host: ipamd::host_name(),
        })
        .await
        .map_err(|s| ipamd::cni_error("garbage collection", &s))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn reads_the_ipam_section() {
        let c = IpamConfig::parse(
            &json!({"ipam": {"type": "danm-ipam", "network": "internal"}}),
            "ns",
        )
        .unwrap();
        assert_eq!(c.ipamd, DEFAULT_IPAMD);
        assert_eq!(c.network.namespace, "ns");
        assert_eq!(c.ip, "dynamic");
        let c = IpamConfig::parse(
            &json!({"ipam": {"network": "external", "kind": "ClusterNetwork", "ip6": "dynamic"}}),
            "ns",
        )
        .unwrap();
        assert_eq!(c.network.namespace, "");
        assert_eq!((c.ip.as_str(), c.ip6.as_str()), ("", "dynamic"));
    }

    #[test]
    fn bad_ipam_sections_name_the_field() {
        for (config, field) in [
            (json!({}), "ipam"),
            (json!({"ipam": {}}), "ipam.network"),
            (json!({"ipam": {"network": 5}}), "ipam.network"),
            (
                json!({"ipam": {"network": "n", "kind": "Pod"}}),
                "ipam.kind",
            ),
            (
                json!({"ipam": {"network": "n", "subnet": "10.0.0.0/8"}}),
                "ipam.subnet",
            ),
        ] {
            let e = IpamConfig::parse(&config, "ns").unwrap_err();
            assert!(e.msg.starts_with(field), "{config}: {e}");
        }
    }

    #[test]
    fn valid_attachments_are_read() {
        let c = json!({"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]});
        assert_eq!(valid_attachments(&c).unwrap().len(), 1);
        let bad = json!({"cni.dev/valid-attachments": [{"containerID": "a"}]});
        assert!(valid_attachments(&bad).unwrap_err().msg.contains("[0]"));
    }
}
