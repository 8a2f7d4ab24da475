//! The Kubernetes backend (`--store kube`): the API server is the only datastore.
//!
//! * Networks are the DanmNet, TenantNetwork and ClusterNetwork objects ([`networks`],
//!   one generic implementation for the three kinds). Reads go to the API (so a write is
//!   read back at once); changes are followed with kube-runtime watchers, which feed
//!   [`StoreEvent::Network`].
//! * Shards are `AllocationShard` objects named as `danm_core::layout::shard_name`, in the
//!   network's namespace (a ClusterNetwork's in ipamd's own namespace), labelled with their
//!   network, with an owner reference to it so deleting a network deletes its shards. The
//!   compare-and-swap version is `metadata.resourceVersion`: a write with a stale one is the
//!   API server's 409 Conflict.
//! * Endpoint records are `DanmEp` objects in the pod's namespace, named after the owner
//!   key and labelled with its container id and fingerprint. A watch-fed cache of their
//!   keys and addresses ([`endpoints`], about 300 bytes each) answers every "which
//!   records" question, so that no request lists DanmEps cluster-wide on a hot path:
//!   reading or deleting one owner's record is one request in its namespace (given by the
//!   caller, or known to the cache), a container's records are found in the cache (and
//!   read by name when the whole record is wanted: Interfaces), and only the orphan
//!   reclaimer's fresh check and the operator's ListAllocations list DanmEps
//!   cluster-wide.

mod endpoints;
mod networks;
mod objects;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use danm_core::{NetworkKey, NetworkKind, OwnerKey};
use danm_crds::{AllocationShard, AllocationShardSpec, DanmEp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use tokio::sync::broadcast;

use super::summary::Interner;
use super::{
    EndpointRecord, EndpointSummary, NetworkObject, PodInfo, ShardKey, Store, StoreError,
    StoreEvent, StoreResult, StoredShard, Version,
};
use endpoints::EndpointCache;
use objects::{
    CONTAINER_ID_LABEL, FAMILY_LABEL, NETWORK_ANNOTATION, OWNER_FINGERPRINT_LABEL,
    SHARD_INDEX_ANNOTATION, fingerprint_label, label_value, map_err, network_labels,
    network_selector, to_record, to_stored,
};

/// The Kubernetes store.
pub struct KubeStore {
    client: Client,
    /// Namespace of ipamd (shards of ClusterNetworks live here).
    namespace: String,
    events: broadcast::Sender<StoreEvent>,
    endpoints: Arc<EndpointCache>,
    /// The watches (networks, DanmEps): they end with the store.
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

/// Every network of `kind`, or those of `namespace` (every ClusterNetwork either way).
pub async fn list_networks(
    client: &Client,
    kind: NetworkKind,
    namespace: Option<&str>,
) -> StoreResult<Vec<NetworkObject>> {
    networks::kind(kind)
        .list(client.clone(), namespace)
        .await
        .map_err(map_err(|| format!("{kind}s")))
}

/// The AllocationShards that carry `key`'s network labels, in every namespace (a
/// ClusterNetwork's live in ipamd's), as stored.
pub async fn list_shards(client: &Client, key: &NetworkKey) -> StoreResult<Vec<AllocationShard>> {
    let select = ListParams::default().labels(&network_selector(key));
    Ok(Api::<AllocationShard>::all(client.clone())
        .list(&select)
        .await
        .map_err(map_err(|| format!("shards of {key}")))?
        .items)
}

/// One network as the API holds it, read without starting any watch (for showalloc while
/// ipamd is down): the network, its shards (found by their network labels, in every
/// namespace: a ClusterNetwork's live in ipamd's) and the DanmEps that carry its labels (in
/// its namespace, or in every namespace for a ClusterNetwork). `None` when it does not exist.
pub async fn read_network(
    client: &Client,
    key: &NetworkKey,
) -> StoreResult<Option<(NetworkObject, Vec<StoredShard>, Vec<EndpointRecord>)>> {
    let Some(network) = networks::kind(key.kind)
        .get(client.clone(), key)
        .await
        .map_err(map_err(|| key.to_string()))?
    else {
        return Ok(None);
    };
    let select = ListParams::default().labels(&network_selector(key));
    let shards = list_shards(client, key)
        .await?
        .into_iter()
        .map(to_stored)
        .filter(|s| s.as_ref().map_or(true, |s| &s.key.network == key))
        .collect::<StoreResult<Vec<_>>>()?;
    let danmeps: Api<DanmEp> = if key.kind.namespaced() {
        Api::namespaced(client.clone(), &key.namespace)
    } else {
        Api::all(client.clone())
    };
    let records = danmeps
        .list(&select)
        .await
        .map_err(map_err(|| format!("DanmEps of {key}")))?
        .items
        .into_iter()
        .filter_map(|ep| to_record(ep).ok())
        .filter(|r| &r.network == key)
        .collect();
    Ok(Some((network, shards, records)))
}

impl KubeStore {
    /// A store over `client`; `namespace` is ipamd's own. Starts the watches of networks
    /// and DanmEps.
    pub async fn new(client: Client, namespace: &str) -> KubeStore {
        let events = broadcast::channel(4096).0;
        let (endpoints, endpoint_watch) = EndpointCache::start(client.clone());
        let mut watches: Vec<_> = NetworkKind::ALL
            .into_iter()
            .map(|kind| networks::kind(kind).follow(client.clone(), events.clone()))
            .collect();
        watches.push(endpoint_watch);
        KubeStore {
            client,
            namespace: namespace.to_owned(),
            events,
            endpoints,
            watches,
        }
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

    fn danmeps(&self, namespace: &str) -> Api<DanmEp> {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// The namespaces where the owner's DanmEp may be: the one given, else those the cache
    /// knows (empty when it knows none).
    fn namespaces_for(&self, owner: &OwnerKey, namespace: Option<&str>) -> Vec<String> {
        match namespace.filter(|n| !n.is_empty()) {
            Some(n) => vec![n.to_owned()],
            None => self.endpoints.namespaces_of(owner),
        }
    }

    /// The owner's DanmEp, read afresh: one GET in the pod's namespace (given, or found in
    /// the cache). Without either, there is none as far as this replica can tell: a record
    /// written a moment ago by another replica for a caller that does not say its pod's
    /// namespace is missed, rather than listing every namespace on a hot path.
    async fn find_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<Option<DanmEp>> {
        let is_owners = |ep: &DanmEp| {
            ep.spec.cid == owner.container_id && ep.spec.interface.name == owner.ifname
        };
        let err = map_err(|| format!("endpoint of owner {owner}"));
        for ns in self.namespaces_for(owner, namespace) {
            if let Some(ep) = self
                .danmeps(&ns)
                .get_opt(&owner.endpoint_name())
                .await
                .map_err(&err)?
                && is_owners(&ep)
            {
                return Ok(Some(ep));
            }
        }
        Ok(None)
    }

    /// The records of a container in the pod's namespace (none without it): one list by
    /// container-id label.
    async fn listed_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        let Some(ns) = namespace.filter(|n| !n.is_empty()) else {
            return Ok(Vec::new());
        };
        let listed = self
            .danmeps(ns)
            .list(&ListParams::default().labels(&format!(
                "{CONTAINER_ID_LABEL}={}",
                label_value(container_id)
            )))
            .await
            .map_err(map_err(|| format!("endpoints of container {container_id}")))?;
        Ok(listed
            .items
            .into_iter()
            .filter_map(|ep| to_record(ep).ok())
            .filter(|r| r.owner.container_id == container_id)
            .collect())
    }

    async fn network_uid(&self, key: &NetworkKey) -> Option<String> {
        networks::kind(key.kind)
            .get(self.client.clone(), key)
            .await
            .ok()??
            .uid
            .into()
    }
}

#[async_trait]
impl Store for KubeStore {
    fn describe(&self) -> String {
        format!("kube (namespace {})", self.namespace)
    }

    async fn ready(&self) -> StoreResult<()> {
        if !self.endpoints.is_synced() {
            return Err(StoreError::Unavailable(
                "the DanmEp cache has not listed the API server's DanmEps yet".into(),
            ));
        }
        self.client
            .apiserver_version()
            .await
            .map(drop)
            .map_err(map_err(|| "the API server".into()))
    }

    async fn list_networks(&self) -> StoreResult<Vec<NetworkObject>> {
        let mut out = Vec::new();
        for kind in NetworkKind::ALL {
            out.extend(
                networks::kind(kind)
                    .list(self.client.clone(), None)
                    .await
                    .map_err(map_err(|| format!("{kind}s")))?,
            );
        }
        Ok(out)
    }

    async fn get_network(&self, key: &NetworkKey) -> StoreResult<Option<NetworkObject>> {
        networks::kind(key.kind)
            .get(self.client.clone(), key)
            .await
            .map_err(map_err(|| key.to_string()))
    }

    async fn put_network(&self, network: NetworkObject) -> StoreResult<()> {
        networks::kind(network.key.kind)
            .put(self.client.clone(), &network)
            .await
            .map_err(map_err(|| network.key.to_string()))
    }

    async fn delete_network(&self, key: &NetworkKey) -> StoreResult<bool> {
        let err = map_err(|| key.to_string());
        let existed = networks::kind(key.kind)
            .delete(self.client.clone(), key)
            .await
            .map_err(&err)?;
        // The garbage collector removes owned shards; delete any it would miss (shards
        // written before the network had a UID) so none is left behind.
        let shards = self.shards(key);
        for s in shards
            .list(&ListParams::default().labels(&network_selector(key)))
            .await
            .map_err(&err)?
        {
            match shards.delete(&s.name_any(), &DeleteParams::default()).await {
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
            .map(to_stored)
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
            .map(to_stored)
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
        labels.insert(FAMILY_LABEL.to_owned(), key.family.tag().to_owned());
        let owner_references = self.network_uid(&key.network).await.map(|uid| {
            vec![OwnerReference {
                api_version: "danm.io/v1".into(),
                kind: key.network.kind.as_str().to_owned(),
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
                    (
                        SHARD_INDEX_ANNOTATION.to_owned(),
                        format!("{:x}", key.index),
                    ),
                    (
                        NETWORK_ANNOTATION.to_owned(),
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
        // One request: a merge patch of the spec (labels and owner references stay) that
        // names the expected resourceVersion, so the API server refuses it with 409 Conflict
        // if the shard changed since.
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": expected},
            "spec": spec,
        });
        let patched = self
            .shards(&key.network)
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
        labels.insert(CONTAINER_ID_LABEL.into(), label_value(&owner.container_id));
        labels.insert(
            OWNER_FINGERPRINT_LABEL.into(),
            fingerprint_label(owner.fingerprint()),
        );
        let ep = DanmEp {
            metadata: ObjectMeta {
                name: Some(owner.endpoint_name()),
                namespace: Some(record.namespace.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            spec: record.spec.clone(),
        };
        self.danmeps(&record.namespace)
            .create(&PostParams::default(), &ep)
            .await
            .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
        self.endpoints.insert(&record);
        Ok(())
    }

    async fn get_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<Option<EndpointRecord>> {
        self.find_endpoint(owner, namespace)
            .await?
            .map(to_record)
            .transpose()
    }

    /// From the DanmEp cache, once it has listed: no request. `namespace` is not needed (the
    /// cache knows every namespace's records).
    async fn may_have_endpoint(&self, owner: &OwnerKey, _namespace: Option<&str>) -> bool {
        !self.endpoints.is_synced() || !self.endpoints.namespaces_of(owner).is_empty()
    }

    /// One DELETE in the pod's namespace (given, or found in the cache).
    async fn delete_endpoint(
        &self,
        owner: &OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<bool> {
        let name = owner.endpoint_name();
        let mut deleted = false;
        for ns in self.namespaces_for(owner, namespace) {
            match self
                .danmeps(&ns)
                .delete(&name, &DeleteParams::default())
                .await
            {
                Ok(_) => deleted = true,
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(map_err(|| format!("endpoint of owner {owner}"))(e)),
            }
            self.endpoints.remove(&ns, &name);
        }
        Ok(deleted)
    }

    /// From the DanmEp cache (it may lag behind other replicas' writes).
    async fn list_endpoints(&self) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        self.endpoints.synced().await?;
        Ok(self.endpoints.all())
    }

    /// From the DanmEp cache; when it knows none and the pod's namespace is given, one
    /// list of that namespace by container-id label (another replica may have written them
    /// a moment ago).
    async fn summaries_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        self.endpoints.synced().await?;
        let cached = self.endpoints.of_container(container_id);
        if !cached.is_empty() || namespace.is_none_or(str::is_empty) {
            return Ok(cached.into_iter().map(|(summary, _)| summary).collect());
        }
        let mut interner = Interner::default();
        Ok(self
            .listed_of_container(container_id, namespace)
            .await?
            .iter()
            .map(|r| Arc::new(EndpointSummary::of(r, &mut interner)))
            .collect())
    }

    /// One GET of each DanmEp the cache knows of the container, in parallel; when it knows
    /// none and the pod's namespace is given, one list of that namespace by container-id
    /// label, as [`Store::summaries_of_container`].
    async fn endpoints_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        self.endpoints.synced().await?;
        let cached = self.endpoints.of_container(container_id);
        if cached.is_empty() {
            return self.listed_of_container(container_id, namespace).await;
        }
        let reads = cached.iter().map(|(summary, name)| async move {
            self.danmeps(summary.namespace())
                .get_opt(name)
                .await
                .map_err(map_err(|| format!("DanmEp {}/{name}", summary.namespace())))
        });
        let mut records = Vec::new();
        for read in futures::future::join_all(reads).await {
            if let Some(record) = read?.and_then(|ep| to_record(ep).ok())
                && record.owner.container_id == container_id
            {
                records.push(record);
            }
        }
        Ok(records)
    }

    /// A fresh list by fingerprint label, with what the cache holds of DanmEps written
    /// before the label existed.
    async fn endpoints_with_fingerprint(
        &self,
        fingerprint: u64,
    ) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        self.endpoints.synced().await?;
        let listed = Api::<DanmEp>::all(self.client.clone())
            .list(&ListParams::default().labels(&format!(
                "{OWNER_FINGERPRINT_LABEL}={}",
                fingerprint_label(fingerprint)
            )))
            .await
            .map_err(map_err(|| {
                format!("endpoints of fingerprint {fingerprint:016x}")
            }))?;
        let mut interner = Interner::default();
        let mut summaries: Vec<Arc<EndpointSummary>> = listed
            .items
            .into_iter()
            .filter_map(|ep| to_record(ep).ok())
            .map(|r| Arc::new(EndpointSummary::of(&r, &mut interner)))
            .collect();
        for cached in self.endpoints.with_fingerprint(fingerprint) {
            if !summaries
                .iter()
                .any(|s| s.namespace() == cached.namespace() && s.is_owned_by(&cached.owner()))
            {
                summaries.push(cached);
            }
        }
        summaries.retain(|s| s.owner().fingerprint() == fingerprint);
        Ok(summaries)
    }

    /// A paginated list of every DanmEp, read from the API (those of `network` kept). No
    /// label selector: DANM's own DanmEps name their network in `apiType` and
    /// `NetworkName`, not in ipamd's labels.
    async fn read_endpoints(
        &self,
        network: Option<&NetworkKey>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        let mut params = ListParams::default().limit(500);
        let api = Api::<DanmEp>::all(self.client.clone());
        let mut records = Vec::new();
        loop {
            let page = api
                .list(&params)
                .await
                .map_err(map_err(|| "DanmEps".to_owned()))?;
            records.extend(page.items.into_iter().filter_map(|ep| to_record(ep).ok()));
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => break,
            }
        }
        records.retain(|r| network.is_none_or(|n| *n == r.network));
        Ok(records)
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
            node_name: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            interfaces: pod
                .annotations()
                .get(danm_crds::names::INTERFACES_ANNOTATION)
                .cloned(),
        }))
    }
}
