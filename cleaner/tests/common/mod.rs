//! A test bed for the cleaner: the real control plane, ipamd on it (in this process, on a
//! loopback port), and helpers that make pods, nodes and allocations.
//!
//! The cleaner (library and binary) and ipamd act as the identities `danm_testkit::identity`
//! gives them: the administrator, or with `DANM_TESTS_AS_SERVICE_ACCOUNTS` their
//! ServiceAccounts of `deploy/base`. The helpers that set up and check act as the
//! administrator.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use danm_cleaner::metrics::Metrics;
use danm_cleaner::{Freer, PassConfig, Report, Sightings};
use danm_ipamd::engine::{Engine, EngineConfig};
use danm_ipamd::server::LocalServer;
use danm_ipamd::store::Store;
use danm_ipamd::store::kube::KubeStore;
use danm_proto::client::Settings;
use danm_proto::v1 as pb;
use danm_testkit::control_plane::ControlPlane;
use danm_testkit::identity;
use k8s_openapi::api::core::v1::{Node, NodeCondition, NodeStatus, Pod};
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};

/// The cleaner sees the whole cluster: the tests of this binary take turns.
pub static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The control plane, a namespace, and ipamd serving on it.
pub struct Bed {
    pub plane: &'static ControlPlane,
    /// The administrator: for setting up and checking.
    pub client: kube::Client,
    /// What the cleaner talks to the API server with (its binary through `KUBECONFIG`,
    /// its library through [`Bed::cleaner_client`]).
    pub cleaner_kubeconfig: PathBuf,
    pub cleaner_client: kube::Client,
    pub ns: String,
    /// `http://127.0.0.1:port`.
    pub ipamd_url: String,
    pub ipamd: danm_proto::client::Client,
    _server: LocalServer,
}

impl Bed {
    pub async fn start(prefix: &str) -> Bed {
        let plane = ControlPlane::shared().await;
        let client = plane.client().await;
        let ns = plane.namespace(prefix).await;
        let ipamd_ns = plane.namespace(&format!("{prefix}-ipamd")).await;
        // ipamd's Release and ReclaimOrphan, which the cleaner calls, run as ipamd.
        let ipamd_client = identity::client_for(plane, "ipamd", &[]).await;
        let store: Arc<dyn Store> = Arc::new(KubeStore::new(ipamd_client, &ipamd_ns).await);
        let cleaner_kubeconfig = identity::kubeconfig_for(plane, "cleaner", &[]).await;
        let cleaner_client = danm_testkit::control_plane::client_from_file(&cleaner_kubeconfig)
            .await
            .unwrap();
        let engine = Engine::start(store, EngineConfig::default()).await.unwrap();
        let server = LocalServer::start(engine).await.unwrap();
        let ipamd_url = server.url();
        let ipamd = danm_proto::client::connect(&Settings::new(&ipamd_url, "cleaner-test"))
            .await
            .unwrap();
        Bed {
            plane,
            client,
            cleaner_kubeconfig,
            cleaner_client,
            ns,
            ipamd_url,
            ipamd,
            _server: server,
        }
    }

    /// A Freer on this bed.
    pub fn freer(&self, dry_run: bool) -> Freer {
        Freer {
            client: self.cleaner_client.clone(),
            ipamd: self.ipamd.clone(),
            dry_run,
            calico: false,
        }
    }

    /// One pass with no grace period.
    pub async fn pass(&self, dry_run: bool) -> Report {
        let config = PassConfig {
            grace: Duration::ZERO,
            concurrency: 16,
            page: 100,
        };
        danm_cleaner::pass(
            &self.freer(dry_run),
            &config,
            &mut Sightings::default(),
            &Metrics::new(),
        )
        .await
        .unwrap()
    }

    /// A DanmNet of this namespace (applied with kubectl); waits until ipamd serves it.
    pub async fn danmnet(&self, name: &str, cidr: &str, net6: Option<&str>) -> pb::NetworkRef {
        let net6 = net6.map(|n| format!(", net6: {n}")).unwrap_or_default();
        self.plane
            .kubectl_apply(&format!(
                "apiVersion: danm.io/v1\nkind: DanmNet\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{NetworkID: {name}, NetworkType: macvlan, Options: {{cidr: {cidr}{net6}}}}}\n",
                ns = self.ns
            ))
            .unwrap();
        let network = pb::NetworkRef {
            kind: pb::NetworkKind::DanmNet as i32,
            namespace: self.ns.clone(),
            name: name.into(),
        };
        for _ in 0..100 {
            let asked = pb::GetNetworkRequest {
                network: Some(network.clone()),
            };
            if self.ipamd.clone().get_network(asked).await.is_ok() {
                return network;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("ipamd does not serve DanmNet {name}");
    }

    /// A Node object (no kubelet behind it), Ready or NotReady.
    pub async fn node(&self, name: &str, ready: bool) {
        let api = Api::<Node>::all(self.client.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &node).await.unwrap();
        let status = NodeStatus {
            conditions: Some(vec![NodeCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: Some(
                    if ready {
                        "KubeletReady"
                    } else {
                        "NodeStatusUnknown"
                    }
                    .into(),
                ),
                ..Default::default()
            }]),
            ..Default::default()
        };
        api.patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .unwrap();
    }

    pub async fn delete_node(&self, name: &str) {
        Api::<Node>::all(self.client.clone())
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }

    /// A pod bound to `node`; its UID.
    pub async fn pod(&self, name: &str, node: &str) -> String {
        let pod = danm_testkit::pods::pod(name, node, &[]);
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
            .metadata
            .uid
            .unwrap()
    }

    /// Deletes a pod at once (no kubelet would confirm a graceful delete).
    pub async fn delete_pod(&self, name: &str) {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .delete(name, &DeleteParams::default().grace_period(0))
            .await
            .unwrap();
        let api = Api::<Pod>::namespaced(self.client.clone(), &self.ns);
        while api.get_opt(name).await.unwrap().is_some() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sets a pod's phase (as kubelet would when it ends).
    pub async fn pod_phase(&self, name: &str, phase: &str) {
        Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({ "status": { "phase": phase } })),
            )
            .await
            .unwrap();
    }

    /// Allocates on `network` for one pod interface, as the CNI would; the IPv4 address.
    #[allow(clippy::too_many_arguments)]
    pub async fn allocate(
        &self,
        network: &pb::NetworkRef,
        cid: &str,
        pod: &str,
        uid: &str,
        node: &str,
        ip: &str,
        ip6: &str,
    ) -> Result<pb::AllocateResponse, tonic::Status> {
        self.ipamd
            .clone()
            .allocate(pb::AllocateRequest {
                network: Some(network.clone()),
                owner: Some(pb::Owner {
                    container_id: cid.into(),
                    ifname: "eth0".into(),
                    pod_namespace: self.ns.clone(),
                    pod_name: pod.into(),
                    pod_uid: uid.into(),
                    host: node.into(),
                    ..Default::default()
                }),
                ip: ip.into(),
                ip6: ip6.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// Every allocated address of `network` with its owner's container id ("" for none).
    pub async fn allocations(&self, network: &pb::NetworkRef) -> Vec<(String, String)> {
        let mut stream = self
            .ipamd
            .clone()
            .list_allocations(pb::ListAllocationsRequest {
                network: Some(network.clone()),
            })
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        while let Some(a) = stream.message().await.unwrap() {
            out.push((
                a.address,
                a.owner.map(|o| o.container_id).unwrap_or_default(),
            ));
        }
        out.sort();
        out
    }
}
