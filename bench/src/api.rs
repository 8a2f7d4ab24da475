//! The Kubernetes API a bench run works against: a fresh real control plane of `testkit`
//! (etcd with fsync on disk, kube-apiserver), with, when asked, `testkit`'s fault proxy in
//! front adding a set latency to every write. The counters are read from the API server's
//! own `apiserver_request_total` metric.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use danm_crds::{DanmEp, DanmEpIface, DanmEpSpec, names};
use danm_testkit::control_plane::{ControlPlane, Options as PlaneOptions};
use danm_testkit::fault_proxy::FaultProxy;
use kube::api::{Api, ObjectMeta, PostParams};

/// What the API server served, as far as the bench counts it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Requests of any kind.
    pub requests: u64,
    /// Creates, updates, patches and deletes that were applied (2xx answers).
    pub writes: u64,
    /// Writes answered 409 (a stale resourceVersion, or AlreadyExists).
    pub conflicts: u64,
    /// Bytes of the answers (the API server's `apiserver_response_sizes`).
    pub response_bytes: Option<u64>,
}

/// A running API server for one bench run.
pub struct Target {
    plane: Box<ControlPlane>,
    /// In front of the API server when a write latency is asked.
    proxy: Option<FaultProxy>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.proxy {
            Some(p) => write!(
                f,
                "kube-apiserver at {} behind {}",
                self.plane.url(),
                p.url()
            ),
            None => write!(f, "kube-apiserver at {}", self.plane.url()),
        }
    }
}

impl Target {
    /// Starts a fresh control plane; with a `write_latency`, the clients and ipamd reach it
    /// through the fault proxy, which holds every write that long before passing it on.
    pub async fn start(write_latency: Duration) -> anyhow::Result<Target> {
        let plane = ControlPlane::start(PlaneOptions {
            etcd_fsync: true,
            ..PlaneOptions::default()
        })
        .await
        .context("starting the real control plane (testkit/k8s/build.sh builds it)")?;
        let proxy = if write_latency.is_zero() {
            None
        } else {
            let proxy = FaultProxy::start(&plane).await?;
            proxy
                .faults()
                .write_latency_ms
                .store(write_latency.as_millis() as u64, Ordering::Relaxed);
            Some(proxy)
        };
        Ok(Target {
            plane: Box::new(plane),
            proxy,
        })
    }

    /// An administrator's client.
    pub async fn client(&self) -> kube::Client {
        match &self.proxy {
            Some(p) => p.client(),
            None => self.plane.client().await,
        }
    }

    /// Writes a kubeconfig for ipamd to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        match &self.proxy {
            Some(p) => std::fs::write(path, p.kubeconfig())?,
            None => {
                std::fs::copy(self.plane.kubeconfig(), path)?;
            }
        }
        Ok(())
    }

    /// `kubectl apply` of `yaml` as the administrator (straight to the API server).
    pub fn kubectl_apply(&self, yaml: &str) -> Result<String, String> {
        self.plane.kubectl_apply(yaml)
    }

    /// The counters so far, from the API server itself.
    pub async fn counters(&self) -> anyhow::Result<Counters> {
        let request = http::Request::get("/metrics").body(Vec::new())?;
        let text = self.plane.client().await.request_text(request).await?;
        Ok(request_counters(&text))
    }
}

/// Sums `apiserver_request_total` and `apiserver_response_sizes_sum` of a Prometheus
/// text exposition.
fn request_counters(metrics: &str) -> Counters {
    let mut c = Counters {
        response_bytes: Some(0),
        ..Counters::default()
    };
    for line in metrics.lines() {
        if let Some(rest) = line.strip_prefix("apiserver_response_sizes_sum{")
            && let Some((_, value)) = rest.rsplit_once('}')
            && let Ok(bytes) = value.trim().parse::<f64>()
        {
            c.response_bytes = c.response_bytes.map(|b| b + bytes as u64);
            continue;
        }
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"'))
        };
        let n = value as u64;
        c.requests += n;
        if matches!(label("verb"), Some("POST" | "PUT" | "PATCH" | "DELETE")) {
            match label("code") {
                Some(code) if code.starts_with('2') => c.writes += n,
                Some("409") => c.conflicts += n,
                _ => {}
            }
        }
    }
    c
}

/// Creates the namespaces `namespaces`, then a macvlan DanmNet `network` on 10.0.0.0/8 in
/// the first of them.
pub async fn namespaces_and_danmnet(
    client: &kube::Client,
    namespaces: &[&str],
    network: &str,
) -> anyhow::Result<()> {
    use danm_crds::{DanmNet, DanmNetSpec, NetworkOptions, NetworkSpec};
    use k8s_openapi::api::core::v1::Namespace;
    for ns in namespaces {
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some((*ns).into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    let spec = NetworkSpec {
        network_id: network.into(),
        network_type: "macvlan".into(),
        options: NetworkOptions {
            cidr: Some("10.0.0.0/8".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<DanmNet>::namespaced(client.clone(), namespaces[0])
        .create(
            &PostParams::default(),
            &DanmNet::new(network, DanmNetSpec { network: spec }),
        )
        .await
        .context("DanmNet")?;
    Ok(())
}

/// Creates `count` DanmEps (one interface each, shaped as a runtime's: a container id of 64
/// hex digits, a node, a netns path, a MAC) on DanmNet `network` of
/// `namespace`, `concurrency` at a time. Each names pod `other-<i>`, or, with `pods`, one of
/// the pods `pod-0` .. `pod-<pods-1>` with its UID (as a pod with many interfaces would).
pub async fn preload_danmeps(
    client: &kube::Client,
    namespace: &str,
    network: &str,
    pods: Option<&[(String, String)]>,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    let api: Api<DanmEp> = Api::namespaced(client.clone(), namespace);
    let (namespace, network) = (namespace.to_owned(), network.to_owned());
    let pods: Arc<Vec<(String, String)>> = Arc::new(pods.map(<[_]>::to_vec).unwrap_or_default());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = (0..concurrency.max(1)).map(|_| {
        let api = api.clone();
        let next = Arc::clone(&next);
        let pods = Arc::clone(&pods);
        let (namespace, network) = (namespace.clone(), network.clone());
        tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), kube::Error>(());
                }
                let owner = danm_core::OwnerKey::new(&container_id_of(i), "eth0").expect("valid");
                let ep = DanmEp {
                    metadata: ObjectMeta {
                        name: Some(owner.endpoint_name()),
                        labels: Some(BTreeMap::from([
                            (names::NETWORK_KIND_LABEL.to_owned(), "DanmNet".to_owned()),
                            (names::NETWORK_NAMESPACE_LABEL.to_owned(), namespace.clone()),
                            (names::NETWORK_NAME_LABEL.to_owned(), network.clone()),
                            (
                                names::CONTAINER_ID_LABEL.to_owned(),
                                // As ipamd labels them: a label value holds 63 characters.
                                owner.container_id.chars().take(63).collect(),
                            ),
                            (
                                names::OWNER_FINGERPRINT_LABEL.to_owned(),
                                format!("{:016x}", owner.fingerprint()),
                            ),
                        ])),
                        ..Default::default()
                    },
                    spec: DanmEpSpec {
                        network_name: network.clone(),
                        network_type: "macvlan".into(),
                        endpoint_id: owner.endpoint_name(),
                        interface: DanmEpIface {
                            name: "eth0".into(),
                            address: format!(
                                "10.{}.{}.{}/8",
                                128 + (i >> 16) % 128,
                                (i >> 8) & 255,
                                i & 255
                            ),
                            mac_address: format!(
                                "0a:58:0a:{:02x}:{:02x}:{:02x}",
                                (i >> 16) & 255,
                                (i >> 8) & 255,
                                i & 255
                            ),
                            ..Default::default()
                        },
                        pod: pods
                            .get(i % pods.len().max(1))
                            .map_or_else(|| format!("other-{i}"), |p| p.0.clone()),
                        pod_uid: pods
                            .get(i % pods.len().max(1))
                            .map_or_else(|| uuid_of(i), |p| p.1.clone()),
                        // Spread on 100 nodes, unless they name real pods (whose node is
                        // left to the caller's checks, as before).
                        host: if pods.is_empty() {
                            format!("node-{:03}", i % 100)
                        } else {
                            String::new()
                        },
                        netns: format!("/var/run/netns/cni-{}", uuid_of(i + count)),
                        cid: owner.container_id.clone(),
                        api_type: "DanmNet".into(),
                    },
                };
                api.create(&PostParams::default(), &ep).await?;
            }
        })
    });
    for worker in futures::future::join_all(workers).await {
        worker??;
    }
    Ok(())
}

/// A container id as runtimes write them (64 hex digits), different for every `i`.
fn container_id_of(i: usize) -> String {
    let mix = |x: u64| x.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29) ^ x;
    let i = i as u64;
    format!(
        "{:016x}{:016x}{:016x}{:016x}",
        mix(i),
        mix(i ^ 0xa5a5),
        mix(i ^ 0x5a5a_0000),
        mix(!i)
    )
}

/// A UUID-shaped text, different for every `i`.
fn uuid_of(i: usize) -> String {
    let hex = container_id_of(i);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preloaded_owners_look_like_a_runtimes_and_differ() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(container_id_of).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| {
            id.len() == 64
                && id
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        }));
        assert_eq!(uuid_of(7).len(), 36);
    }

    #[test]
    fn request_counters_sum_the_api_servers_metric() {
        let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="danm.io",resource="danmnets",scope="resource",subresource="",verb="GET",version="v1"} 7
apiserver_request_total{code="200",component="apiserver",dry_run="",group="danm.io",resource="danmnets",scope="resource",subresource="",verb="PUT",version="v1"} 5
apiserver_request_total{code="409",component="apiserver",dry_run="",group="danm.io",resource="danmnets",scope="resource",subresource="",verb="PUT",version="v1"} 3
apiserver_request_total{code="201",component="apiserver",dry_run="",group="danm.io",resource="danmeps",scope="resource",subresource="",verb="POST",version="v1"} 2
apiserver_request_duration_seconds_count{verb="PUT"} 99
apiserver_response_sizes_sum{component="apiserver",group="danm.io",resource="danmnets",scope="resource",subresource="",verb="GET",version="v1"} 4096
apiserver_response_sizes_sum{component="apiserver",group="",resource="pods",scope="resource",subresource="",verb="GET",version="v1"} 1000
"#;
        let c = request_counters(text);
        assert_eq!((c.requests, c.writes, c.conflicts), (17, 7, 3));
        assert_eq!(c.response_bytes, Some(5096));
    }
}
