//! A memory store whose shard writes can be held, lost or raced by another writer, for the
//! unit tests of the worker and the engine.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use danm_core::layout::local_offset;
use danm_core::{Family, NetworkKey};
use danm_crds::AllocationShardSpec;
use tokio::sync::Notify;

use crate::store::memory::MemoryStore;
use crate::store::{
    EndpointRecord, EndpointSummary, NetworkObject, ShardKey, Store, StoreError, StoreEvent,
    StoreResult, StoredShard, Version,
};

/// What happens to the next shard write.
pub(crate) enum Trouble {
    /// Wait until the test says go.
    Hold(Arc<Notify>),
    /// Another replica writes the shard first, taking this offset (our write then loses
    /// its compare-and-swap). Waits for a write of that family.
    Race {
        family: Family,
        offset: u128,
        thief: u64,
    },
    /// The write lands, but its answer is lost (the caller sees UNAVAILABLE).
    LoseAnswer,
}

/// A shard read to hold: the one after `skip` more reads.
pub(crate) struct HeldRead {
    pub(crate) skip: usize,
    pub(crate) go: Arc<Notify>,
}

/// A memory store with [`Trouble`] queued for its shard writes.
pub(crate) struct TroubledStore {
    pub(crate) inner: MemoryStore,
    troubles: Mutex<Vec<Trouble>>,
    held_read: Mutex<Option<HeldRead>>,
    writes: AtomicU32,
    /// Answer [`Store::may_have_endpoint`] with `false` whatever is stored: a watch-fed
    /// cache that has not seen the records yet.
    blind: std::sync::atomic::AtomicBool,
}

impl TroubledStore {
    pub(crate) fn new() -> Arc<TroubledStore> {
        Arc::new(TroubledStore {
            inner: MemoryStore::new(),
            troubles: Mutex::new(Vec::new()),
            held_read: Mutex::new(None),
            writes: AtomicU32::new(0),
            blind: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// From now on, say that no owner has a record (a lagging cache's hint).
    pub(crate) fn blind(&self) {
        self.blind.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Queues trouble for a coming shard write.
    pub(crate) fn then(&self, trouble: Trouble) {
        self.troubles.lock().unwrap().push(trouble);
    }

    /// Applies the next trouble; true when the answer must be lost after the write.
    async fn before_write(&self, key: &ShardKey) -> bool {
        let trouble = {
            let mut t = self.troubles.lock().unwrap();
            let applies =
                |t: &Trouble| !matches!(t, Trouble::Race { family, .. } if *family != key.family);
            t.iter().position(applies).map(|i| t.remove(i))
        };
        match trouble {
            None => false,
            Some(Trouble::Hold(go)) => {
                go.notified().await;
                false
            }
            Some(Trouble::Race { offset, thief, .. }) => {
                steal(&self.inner, key, offset, thief).await;
                false
            }
            Some(Trouble::LoseAnswer) => true,
        }
    }
}

/// Another writer sets `offset` for `thief` in the shard of `key` (creating it if needed).
pub(crate) async fn steal(store: &dyn Store, key: &ShardKey, offset: u128, thief: u64) {
    let current = store.get_shard(key).await.unwrap();
    let mut bits = match &current {
        Some(s) => danm_core::ShardBits::decode(&s.spec.payload, s.spec.crc32).unwrap(),
        None => danm_core::ShardBits::new(),
    };
    bits.insert(local_offset(offset), thief).unwrap();
    let encoded = bits.encode();
    let spec = AllocationShardSpec {
        family: key.family.as_str().to_owned(),
        allocated: encoded.allocated,
        crc32: encoded.crc32,
        payload: encoded.payload,
        revision: current.as_ref().map_or(0, |s| s.spec.revision) + 1,
        ..current.as_ref().map(|s| s.spec.clone()).unwrap_or_default()
    };
    match current {
        Some(s) => store.update_shard(key, spec, &s.version).await.unwrap(),
        None => store.create_shard(key, spec).await.unwrap(),
    };
}

#[async_trait]
impl Store for TroubledStore {
    fn describe(&self) -> String {
        "troubled memory".into()
    }
    async fn list_networks(&self) -> StoreResult<Vec<NetworkObject>> {
        self.inner.list_networks().await
    }
    async fn get_network(&self, key: &NetworkKey) -> StoreResult<Option<NetworkObject>> {
        self.inner.get_network(key).await
    }
    async fn put_network(&self, network: NetworkObject) -> StoreResult<()> {
        self.inner.put_network(network).await
    }
    async fn delete_network(&self, key: &NetworkKey) -> StoreResult<bool> {
        self.inner.delete_network(key).await
    }
    async fn get_shard(&self, key: &ShardKey) -> StoreResult<Option<StoredShard>> {
        let hold = {
            let mut held = self.held_read.lock().unwrap();
            match held.as_mut() {
                Some(h) if h.skip > 0 => {
                    h.skip -= 1;
                    None
                }
                Some(_) => held.take().map(|h| h.go),
                None => None,
            }
        };
        if let Some(go) = hold {
            go.notified().await;
        }
        self.inner.get_shard(key).await
    }
    async fn list_shards(&self, network: &NetworkKey) -> StoreResult<Vec<StoredShard>> {
        self.inner.list_shards(network).await
    }
    async fn create_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
    ) -> StoreResult<Version> {
        let lose = self.before_write(key).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let v = self.inner.create_shard(key, spec).await?;
        if lose {
            return Err(StoreError::Unavailable("answer lost".into()));
        }
        Ok(v)
    }
    async fn update_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
        expected: &Version,
    ) -> StoreResult<Version> {
        let lose = self.before_write(key).await;
        self.writes.fetch_add(1, Ordering::Relaxed);
        let v = self.inner.update_shard(key, spec, expected).await?;
        if lose {
            return Err(StoreError::Unavailable("answer lost".into()));
        }
        Ok(v)
    }
    async fn create_endpoint(&self, record: EndpointRecord) -> StoreResult<()> {
        self.inner.create_endpoint(record).await
    }
    async fn get_endpoint(
        &self,
        owner: &danm_core::OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<Option<EndpointRecord>> {
        self.inner.get_endpoint(owner, namespace).await
    }
    async fn may_have_endpoint(
        &self,
        owner: &danm_core::OwnerKey,
        namespace: Option<&str>,
    ) -> bool {
        !self.blind.load(std::sync::atomic::Ordering::SeqCst)
            && self.inner.may_have_endpoint(owner, namespace).await
    }
    async fn delete_endpoint(
        &self,
        owner: &danm_core::OwnerKey,
        namespace: Option<&str>,
    ) -> StoreResult<bool> {
        self.inner.delete_endpoint(owner, namespace).await
    }
    async fn list_endpoints(&self) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        self.inner.list_endpoints().await
    }
    async fn summaries_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        self.inner
            .summaries_of_container(container_id, namespace)
            .await
    }
    async fn endpoints_of_container(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        self.inner
            .endpoints_of_container(container_id, namespace)
            .await
    }
    async fn endpoints_with_fingerprint(
        &self,
        fingerprint: u64,
    ) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        self.inner.endpoints_with_fingerprint(fingerprint).await
    }
    async fn read_endpoints(
        &self,
        network: Option<&danm_core::NetworkKey>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        self.inner.read_endpoints(network).await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<StoreEvent> {
        self.inner.subscribe()
    }
}

impl TroubledStore {
    /// Holds a coming shard read (see [`HeldRead`]).
    pub(crate) fn hold_read(&self, read: HeldRead) {
        *self.held_read.lock().unwrap() = Some(read);
    }

    /// Whether every queued trouble has been met (the held read included).
    pub(crate) fn all_met(&self) -> bool {
        self.troubles.lock().unwrap().is_empty() && self.held_read.lock().unwrap().is_none()
    }

    /// Shard writes so far.
    pub(crate) fn writes(&self) -> u32 {
        self.writes.load(Ordering::Relaxed)
    }
}
