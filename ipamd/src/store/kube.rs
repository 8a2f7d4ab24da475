//! The Kubernetes backend (`--store kube`): the API server is the only datastore.
//!
//! * Networks are the DanmNet, TenantNetwork and ClusterNetwork objects. Reads go to the API
//!   (so a write is read back at once); changes are followed with watches (kube-runtime
//!   watchers), which feed [`StoreEvent::Network`].
//! * Shards are `AllocationShard` objects named as `danm_core::layout::shard_name`, in the
//!   network's namespace (a ClusterNetwork's in ipamd's own namespace), labelled with their
//!   network, with an owner reference to it so deleting a network deletes its shards. The
//!   compare-and-swap version is `metadata.resourceVersion`: a replace with a stale one is the
//!   API server's 409 Conflict.
//! * Endpoint records are `DanmEp` objects in the pod's namespace, named after the owner key,
//!   so a retry finds its record with one GET when the pod's namespace is known (every
//!   Allocate and a Release that names the pod), else with a field selector on the name.

use std::collections::BTreeMap;

use async_trait::async_trait;
use danm_core::{Family, NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{
    AllocationShard, AllocationShardSpec, ClusterNetwork, ClusterNetworkSpec, DanmEp, DanmNet,
    DanmNetSpec, TenantNetwork, TenantNetworkSpec,
};
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::broadcast;

use super::{
    EndpointRecord, NetworkObject, PodInfo, ShardKey, Store, StoreError, StoreEvent, StoreResult,
    StoredShard, Version,
};

const LABEL_KIND: &str = "danm.io/network-kind";
const LABEL_NAMESPACE: &str = "danm.io/network-namespace";
const LABEL_NAME: &str = "danm.io/network-name";
const LABEL_FAMILY: &str = "danm.io/family";
const ANNOTATION_INDEX: &str = "danm.io/shard-index";
const ANNOTATION_NETWORK: &str = "danm.io/network";

/// The Kubernetes store.
#[derive(Clone)]
pub struct KubeStore {
    client: Client,
    /// Namespace of ipamd (shards of ClusterNetworks live here).
    namespace: String,
    events: broadcast::Sender<StoreEvent>,
    /// The network watches: they end with the store.
    watches: Vec<tokio::task::AbortHandle>,
}

impl Drop for KubeStore {
    fn drop(&mut self) {
        for watch in &self.watches {
            watch.abort();
        }
    }
}

impl std::fmt::Debug for KubeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStore")
            .field("namespace", &self.namespace)
            .finish()
    }
}

fn map_err(what: impl Fn() -> String) -> impl Fn(kube::Error) -> StoreError {
    move |e| match &e {
        kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists" => {
            StoreError::AlreadyExists(what())
        }
        kube::Error::Api(s) if s.code == 409 => StoreError::Conflict(what()),
        kube::Error::Api(s) if s.code == 404 => StoreError::NotFound(what()),
        _ => StoreError::Unavailable(format!("{}: {e}", what())),
    }
}

fn label_value(text: &str) -> String {
    // Label values: at most 63 characters of [A-Za-z0-9._-]; names and namespaces fit.
    text.chars().take(63).collect()
}

fn network_labels(key: &NetworkKey) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_KIND.to_owned(), key.kind.as_str().to_owned()),
        (LABEL_NAMESPACE.to_owned(), label_value(&key.namespace)),
        (LABEL_NAME.to_owned(), label_value(&key.name)),
    ])
}

fn network_selector(key: &NetworkKey) -> String {
    format!(
        "{LABEL_KIND}={},{LABEL_NAMESPACE}={},{LABEL_NAME}={}",
        key.kind.as_str(),
        label_value(&key.namespace),
        label_value(&key.name)
    )
}

impl KubeStore {
    /// A store over `client`; `namespace` is ipamd's own. Starts the network watches.
    pub async fn new(client: Client, namespace: &str) -> KubeStore {
        let mut store = KubeStore {
            client,
            namespace: namespace.to_owned(),
            events: broadcast::channel(4096).0,
            watches: Vec::new(),
        };
        store.watches = vec![
            store.follow::<DanmNet>(NetworkKind::DanmNet),
            store.follow::<TenantNetwork>(NetworkKind::TenantNetwork),
            store.follow::<ClusterNetwork>(NetworkKind::ClusterNetwork),
        ];
        store
    }

    /// Follows one network kind; a failing watch is retried with kube-runtime's backoff
    /// (up to about 30 s apart), never in a busy loop.
    fn follow<K>(&self, kind: NetworkKind) -> tokio::task::AbortHandle
    where
        K: Resource<DynamicType = ()>
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let api: Api<K> = Api::all(self.client.clone());
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            while let Some(event) = stream.next().await {
                let objects = match event {
                    Ok(
                        watcher::Event::Apply(o)
                        | watcher::Event::InitApply(o)
                        | watcher::Event::Delete(o),
                    ) => vec![o],
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(%kind, error = %e, "network watch failed, retrying");
                        continue;
                    }
                };
                for o in objects {
                    let key =
                        NetworkKey::new(kind, &o.namespace().unwrap_or_default(), &o.name_any());
                    let _ = events.send(StoreEvent::Network(key));
                }
            }
        })
        .abort_handle()
    }

    fn shard_namespace(&self, network: &NetworkKey) -> String {
        if network.kind.namespaced() {
            network.namespace.clone()
        } else {
            self.namespace.clone()
        }
    }

    fn shards(&self, network: &NetworkKey) -> Api<AllocationShard> {
        Api::namespaced(self.client.clone(), &self.shard_namespace(network))
    }

    async fn network_uid(&self, key: &NetworkKey) -> Option<(String, String)> {
        let uid = match key.kind {
            NetworkKind::DanmNet => Api::<DanmNet>::namespaced(self.client.clone(), &key.namespace)
                .get_opt(&key.name)
                .await
                .ok()??
                .uid(),
            NetworkKind::TenantNetwork => {
                Api::<TenantNetwork>::namespaced(self.client.clone(), &key.namespace)
                    .get_opt(&key.name)
                    .await
                    .ok()??
                    .uid()
            }
            NetworkKind::ClusterNetwork => Api::<ClusterNetwork>::all(self.client.clone())
                .get_opt(&key.name)
                .await
                .ok()??
                .uid(),
        };
        uid.map(|u| (key.kind.as_str().to_owned(), u))
    }

    fn to_stored(object: AllocationShard) -> StoreResult<StoredShard> {
        let name = object.name_any();
        let unreadable = |reason: &str| StoreError::Unreadable {
            key: name.clone(),
            reason: reason.to_owned(),
        };
        let network = object
            .annotations()
            .get(ANNOTATION_NETWORK)
            .and_then(|n| {
                let mut parts = n.splitn(3, '/');
                let kind = NetworkKind::parse(parts.next()?)?;
                Some(NetworkKey::new(kind, parts.next()?, parts.next()?))
            })
            .ok_or_else(|| unreadable("no danm.io/network annotation"))?;
        let family =
            Family::parse(&object.spec.family).ok_or_else(|| unreadable("unknown family"))?;
        let index = object
            .annotations()
            .get(ANNOTATION_INDEX)
            .and_then(|i| u128::from_str_radix(i, 16).ok())
            .ok_or_else(|| unreadable("no shard index annotation"))?;
        Ok(StoredShard {
            key: ShardKey {
                network,
                family,
                index,
            },
            version: object.resource_version().unwrap_or_default(),
            spec: object.spec,
        })
    }

    async fn find_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<Option<DanmEp>> {
        let is_owners = |ep: &DanmEp| {
            ep.spec.cid == owner.container_id && ep.spec.interface.name == owner.ifname
        };
        if let Some(namespace) = namespace.filter(|n| !n.is_empty()) {
            let api: Api<DanmEp> = Api::namespaced(self.client.clone(), namespace);
            let found = api
                .get_opt(&owner.endpoint_name())
                .await
                .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
            return Ok(found.filter(is_owners));
        }
        let api: Api<DanmEp> = Api::all(self.client.clone());
        let list = api
            .list(
                &ListParams::default().fields(&format!("metadata.name={}", owner.endpoint_name())),
            )
            .await
            .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
        Ok(list.items.into_iter().find(is_owners))
    }

    fn to_record(ep: DanmEp) -> StoreResult<EndpointRecord> {
        let name = ep.name_any();
        let labels = ep.labels();
        let kind = labels
            .get(LABEL_KIND)
            .and_then(|k| NetworkKind::parse(k))
            .or_else(|| NetworkKind::parse(&ep.spec.api_type))
            .ok_or_else(|| StoreError::Unreadable {
                key: name.clone(),
                reason: "no network kind".into(),
            })?;
        let namespace = ep.namespace().unwrap_or_default();
        let net_namespace = labels
            .get(LABEL_NAMESPACE)
            .cloned()
            .unwrap_or_else(|| namespace.clone());
        let owner = OwnerKey::new(&ep.spec.cid, &ep.spec.interface.name).map_err(|e| {
            StoreError::Unreadable {
                key: name,
                reason: e.to_string(),
            }
        })?;
        Ok(EndpointRecord {
            owner,
            network: NetworkKey::new(kind, &net_namespace, &ep.spec.network_name),
            namespace,
            spec: ep.spec,
        })
    }
}

#[async_trait]
impl Store for KubeStore {
    fn describe(&self) -> String {
        format!("kube (namespace {})", self.namespace)
    }

    async fn list_networks(&self) -> StoreResult<Vec<NetworkObject>> {
        let lp = ListParams::default();
        let err = map_err(|| "networks".into());
        let mut out = Vec::new();
        for n in Api::<DanmNet>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(&err)?
        {
            out.push(NetworkObject {
                key: NetworkKey::new(
                    NetworkKind::DanmNet,
                    &n.namespace().unwrap_or_default(),
                    &n.name_any(),
                ),
                uid: n.uid().unwrap_or_default(),
                spec: n.spec.network,
            });
        }
        for n in Api::<TenantNetwork>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(&err)?
        {
            out.push(NetworkObject {
                key: NetworkKey::new(
                    NetworkKind::TenantNetwork,
                    &n.namespace().unwrap_or_default(),
                    &n.name_any(),
                ),
                uid: n.uid().unwrap_or_default(),
                spec: n.spec.network,
            });
        }
        for n in Api::<ClusterNetwork>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(&err)?
        {
            out.push(NetworkObject {
                key: NetworkKey::new(NetworkKind::ClusterNetwork, "", &n.name_any()),
                uid: n.uid().unwrap_or_default(),
                spec: n.spec.network,
            });
        }
        Ok(out)
    }

    async fn get_network(&self, key: &NetworkKey) -> StoreResult<Option<NetworkObject>> {
        let err = map_err(|| key.to_string());
        let c = self.client.clone();
        let found = match key.kind {
            NetworkKind::DanmNet => Api::<DanmNet>::namespaced(c, &key.namespace)
                .get_opt(&key.name)
                .await
                .map_err(err)?
                .map(|n| (n.uid(), n.spec.network)),
            NetworkKind::TenantNetwork => Api::<TenantNetwork>::namespaced(c, &key.namespace)
                .get_opt(&key.name)
                .await
                .map_err(err)?
                .map(|n| (n.uid(), n.spec.network)),
            NetworkKind::ClusterNetwork => Api::<ClusterNetwork>::all(c)
                .get_opt(&key.name)
                .await
                .map_err(err)?
                .map(|n| (n.uid(), n.spec.network)),
        };
        Ok(found.map(|(uid, spec)| NetworkObject {
            key: key.clone(),
            uid: uid.unwrap_or_default(),
            spec,
        }))
    }

    async fn put_network(&self, network: NetworkObject) -> StoreResult<()> {
        let err = map_err(|| network.key.to_string());
        let pp = PostParams::default();
        let key = &network.key;
        let c = self.client.clone();
        macro_rules! upsert {
            ($api:expr, $obj:expr) => {{
                let api = $api;
                let mut obj = $obj;
                match api.get_opt(&key.name).await.map_err(&err)? {
                    Some(current) => {
                        obj.metadata.resource_version = current.resource_version();
                        api.replace(&key.name, &pp, &obj).await.map_err(&err)?;
                    }
                    None => {
                        api.create(&pp, &obj).await.map_err(&err)?;
                    }
                }
            }};
        }
        match key.kind {
            NetworkKind::DanmNet => upsert!(
                Api::<DanmNet>::namespaced(c, &key.namespace),
                DanmNet::new(
                    &key.name,
                    DanmNetSpec {
                        network: network.spec.clone()
                    }
                )
            ),
            NetworkKind::TenantNetwork => upsert!(
                Api::<TenantNetwork>::namespaced(c, &key.namespace),
                TenantNetwork::new(
                    &key.name,
                    TenantNetworkSpec {
                        network: network.spec.clone()
                    }
                )
            ),
            NetworkKind::ClusterNetwork => upsert!(
                Api::<ClusterNetwork>::all(c),
                ClusterNetwork::new(
                    &key.name,
                    ClusterNetworkSpec {
                        network: network.spec.clone()
                    }
                )
            ),
        }
        Ok(())
    }

    async fn delete_network(&self, key: &NetworkKey) -> StoreResult<bool> {
        let err = map_err(|| key.to_string());
        let dp = DeleteParams::default();
        let c = self.client.clone();
        let deleted = match key.kind {
            NetworkKind::DanmNet => Api::<DanmNet>::namespaced(c, &key.namespace)
                .delete(&key.name, &dp)
                .await
                .map(|_| ()),
            NetworkKind::TenantNetwork => Api::<TenantNetwork>::namespaced(c, &key.namespace)
                .delete(&key.name, &dp)
                .await
                .map(|_| ()),
            NetworkKind::ClusterNetwork => Api::<ClusterNetwork>::all(c)
                .delete(&key.name, &dp)
                .await
                .map(|_| ()),
        };
        let existed = match deleted {
            Ok(()) => true,
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(e) => return Err(err(e)),
        };
        // The garbage collector removes owned shards; delete any it would miss (shards
        // written before the network had a UID) so none is left behind.
        let shards = self.shards(key);
        for s in shards
            .list(&ListParams::default().labels(&network_selector(key)))
            .await
            .map_err(&err)?
        {
            match shards.delete(&s.name_any(), &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(existed)
    }

    async fn get_shard(&self, key: &ShardKey) -> StoreResult<Option<StoredShard>> {
        self.shards(&key.network)
            .get_opt(&key.name())
            .await
            .map_err(map_err(|| key.to_string()))?
            .map(KubeStore::to_stored)
            .transpose()
    }

    async fn list_shards(&self, network: &NetworkKey) -> StoreResult<Vec<StoredShard>> {
        let list = self
            .shards(network)
            .list(&ListParams::default().labels(&network_selector(network)))
            .await
            .map_err(map_err(|| format!("shards of {network}")))?;
        let mut shards: Vec<StoredShard> = list
            .items
            .into_iter()
            .map(KubeStore::to_stored)
            .collect::<StoreResult<_>>()?;
        shards.retain(|s| &s.key.network == network);
        shards.sort_by_key(|s| (s.key.family, s.key.index));
        Ok(shards)
    }

    async fn create_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
    ) -> StoreResult<Version> {
        let mut labels = network_labels(&key.network);
        labels.insert(LABEL_FAMILY.to_owned(), key.family.tag().to_owned());
        let owner_references = self.network_uid(&key.network).await.map(|(kind, uid)| {
            vec![OwnerReference {
                api_version: "danm.io/v1".into(),
                kind,
                name: key.network.name.clone(),
                uid,
                block_owner_deletion: None,
                controller: Some(false),
            }]
        });
        let object = AllocationShard {
            metadata: ObjectMeta {
                name: Some(key.name()),
                namespace: Some(self.shard_namespace(&key.network)),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([
                    (ANNOTATION_INDEX.to_owned(), format!("{:x}", key.index)),
                    (
                        ANNOTATION_NETWORK.to_owned(),
                        super::network_storage_key(&key.network),
                    ),
                ])),
                owner_references,
                ..Default::default()
            },
            spec,
        };
        let created = self
            .shards(&key.network)
            .create(&PostParams::default(), &object)
            .await
            .map_err(map_err(|| key.to_string()))?;
        Ok(created.resource_version().unwrap_or_default())
    }

    async fn update_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
        expected: &Version,
    ) -> StoreResult<Version> {
        let api = self.shards(&key.network);
        // One request: a merge patch of the spec (labels and owner references stay) that
        // names the expected resourceVersion, so the API server refuses it with 409 Conflict
        // if the shard changed since.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": expected},
            "spec": spec,
        });
        let patched = api
            .patch(&key.name(), &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(map_err(|| key.to_string()))?;
        Ok(patched.resource_version().unwrap_or_default())
    }

    async fn create_endpoint(&self, mut record: EndpointRecord) -> StoreResult<()> {
        let owner = record.owner.clone();
        // The DanmEp itself names its owner and network (that is how it is read back).
        record.spec.cid = owner.container_id.clone();
        record.spec.interface.name = owner.ifname.clone();
        record.spec.network_name = record.network.name.clone();
        record.spec.api_type = record.network.kind.as_str().to_owned();
        let mut labels = network_labels(&record.network);
        labels.insert(
            "danm.io/container-id".into(),
            label_value(&owner.container_id),
        );
        let ep = DanmEp {
            metadata: ObjectMeta {
                name: Some(owner.endpoint_name()),
                namespace: Some(record.namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: record.spec,
        };
        Api::<DanmEp>::namespaced(self.client.clone(), &record.namespace)
            .create(&PostParams::default(), &ep)
            .await
            .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
        Ok(())
    }

    async fn get_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<Option<EndpointRecord>> {
        self.find_endpoint(owner, namespace)
            .await?
            .map(KubeStore::to_record)
            .transpose()
    }

    async fn delete_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<bool> {
        let Some(ep) = self.find_endpoint(owner, namespace).await? else {
            return Ok(false);
        };
        let api: Api<DanmEp> =
            Api::namespaced(self.client.clone(), &ep.namespace().unwrap_or_default());
        match api.delete(&ep.name_any(), &DeleteParams::default()).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(map_err(|| format!("endpoint of owner {owner}"))(e)),
        }
    }

    async fn list_endpoints(&self) -> StoreResult<Vec<EndpointRecord>> {
        let list = Api::<DanmEp>::all(self.client.clone())
            .list(&ListParams::default())
            .await
            .map_err(map_err(|| "endpoints".into()))?;
        list.items.into_iter().map(KubeStore::to_record).collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    async fn pod(&self, namespace: &str, name: &str) -> StoreResult<Option<PodInfo>> {
        let api: Api<k8s_openapi::api::core::v1::Pod> =
            Api::namespaced(self.client.clone(), namespace);
        let pod = api
            .get(name)
            .await
            .map_err(map_err(|| format!("pod {namespace}/{name}")))?;
        Ok(Some(PodInfo {
            uid: pod.uid().unwrap_or_default(),
            interfaces: pod
                .annotations()
                .get(danm_crds::INTERFACES_ANNOTATION)
                .cloned(),
        }))
    }
}
