//! The key-value core shared by the memory and file backends.
//!
//! A [`KvBackend`] is three tables of `key -> (version, bytes)` with one conditional write;
//! [`KvStore`] turns it into a [`Store`] by serializing records as JSON and publishing change
//! events. Versions come from one counter per store, so a version is never reused.

use std::sync::Arc;

use async_trait::async_trait;
use danm_core::{NetworkKey, OwnerKey};
use danm_crds::AllocationShardSpec;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;

use super::summary::Interner;
use super::{
    EndpointRecord, EndpointSummary, NetworkObject, ShardKey, Store, StoreError, StoreEvent,
    StoreResult, StoredShard, Version, network_storage_key, parse_shard_storage_key,
    shard_storage_key,
};

/// The tables of a key-value backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    /// Networks by `kind/namespace/name`.
    Networks,
    /// Shards by `kind/namespace/name/family/index`.
    Shards,
    /// Endpoint records by owner endpoint name.
    Endpoints,
}

/// The condition of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Unconditional.
    Any,
    /// The key must not exist.
    Absent,
    /// The key must exist at this version.
    Version(u64),
}

/// Why a key-value operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    /// The key is at another version.
    Conflict,
    /// The key exists (with [`Expect::Absent`]).
    Exists,
    /// The key does not exist (with [`Expect::Version`]).
    Missing,
    /// The backend failed.
    Backend(String),
}

/// A versioned key-value backend (synchronous; called from blocking tasks).
pub trait KvBackend: Send + Sync + 'static {
    /// Human-readable description.
    fn describe(&self) -> String;
    /// One value with its version.
    fn get(&self, table: Table, key: &str) -> Result<Option<(u64, Vec<u8>)>, KvError>;
    /// Every entry whose key starts with `prefix`, in key order.
    fn scan(&self, table: Table, prefix: &str) -> Result<Vec<(String, u64, Vec<u8>)>, KvError>;
    /// Writes `value` (or deletes, with `None`) if `expect` holds; returns the new version.
    fn write(
        &self,
        table: Table,
        key: &str,
        expect: Expect,
        value: Option<Vec<u8>>,
    ) -> Result<u64, KvError>;
    /// Deletes every entry whose key starts with `prefix`.
    fn delete_prefix(&self, table: Table, prefix: &str) -> Result<(), KvError>;
}

/// A [`Store`] over a [`KvBackend`].
#[derive(Debug)]
pub struct KvStore<B> {
    backend: Arc<B>,
    events: broadcast::Sender<StoreEvent>,
}

impl<B: KvBackend> KvStore<B> {
    /// Wraps a backend.
    pub fn with_backend(backend: B) -> KvStore<B> {
        KvStore {
            backend: Arc::new(backend),
            events: broadcast::channel(4096).0,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    async fn run<T: Send + 'static>(
        &self,
        op: impl FnOnce(&B) -> Result<T, KvError> + Send + 'static,
    ) -> Result<T, KvError> {
        let backend = Arc::clone(&self.backend);
        tokio::task::spawn_blocking(move || op(&backend))
            .await
            .map_err(|e| KvError::Backend(format!("store task failed: {e}")))?
    }

    fn notify(&self, event: StoreEvent) {
        // No receiver is fine: nobody is watching.
        let _ = self.events.send(event);
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("store records always serialize")
}

fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> StoreResult<T> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Unreadable {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn map_err(what: impl Fn() -> String) -> impl Fn(KvError) -> StoreError {
    move |e| match e {
        KvError::Conflict => StoreError::Conflict(what()),
        KvError::Exists => StoreError::AlreadyExists(what()),
        KvError::Missing => StoreError::NotFound(what()),
        KvError::Backend(m) => StoreError::Unavailable(m),
    }
}

fn decode_shard(key_text: &str, version: u64, bytes: &[u8]) -> StoreResult<StoredShard> {
    let key = parse_shard_storage_key(key_text).ok_or_else(|| StoreError::Unreadable {
        key: key_text.to_owned(),
        reason: "not a shard key".into(),
    })?;
    Ok(StoredShard {
        key,
        version: version.to_string(),
        spec: decode(key_text, bytes)?,
    })
}

fn parse_version(what: &str, version: &Version) -> StoreResult<u64> {
    version
        .parse()
        .map_err(|_| StoreError::Conflict(format!("{what} (version {version:?} is not ours)")))
}

#[async_trait]
impl<B: KvBackend> Store for KvStore<B> {
    fn describe(&self) -> String {
        self.backend.describe()
    }

    async fn list_networks(&self) -> StoreResult<Vec<NetworkObject>> {
        let rows = self
            .run(|b| b.scan(Table::Networks, ""))
            .await
            .map_err(map_err(|| "networks".into()))?;
        rows.iter().map(|(k, _, v)| decode(k, v)).collect()
    }

    async fn get_network(&self, key: &NetworkKey) -> StoreResult<Option<NetworkObject>> {
        let k = network_storage_key(key);
        let k2 = k.clone();
        let row = self
            .run(move |b| b.get(Table::Networks, &k2))
            .await
            .map_err(map_err(|| key.to_string()))?;
        row.map(|(_, v)| decode(&k, &v)).transpose()
    }

    async fn put_network(&self, network: NetworkObject) -> StoreResult<()> {
        let k = network_storage_key(&network.key);
        let bytes = encode(&network);
        let key = network.key.clone();
        self.run(move |b| b.write(Table::Networks, &k, Expect::Any, Some(bytes)))
            .await
            .map_err(map_err(|| key.to_string()))?;
        self.notify(StoreEvent::Network(network.key));
        Ok(())
    }

    async fn delete_network(&self, key: &NetworkKey) -> StoreResult<bool> {
        let k = network_storage_key(key);
        let existed = self
            .run(move |b| {
                let existed = b.get(Table::Networks, &k)?.is_some();
                b.write(Table::Networks, &k, Expect::Any, None)?;
                b.delete_prefix(Table::Shards, &format!("{k}/"))?;
                Ok(existed)
            })
            .await
            .map_err(map_err(|| key.to_string()))?;
        self.notify(StoreEvent::Network(key.clone()));
        Ok(existed)
    }

    async fn get_shard(&self, key: &ShardKey) -> StoreResult<Option<StoredShard>> {
        let k = shard_storage_key(key);
        let k2 = k.clone();
        let row = self
            .run(move |b| b.get(Table::Shards, &k2))
            .await
            .map_err(map_err(|| key.to_string()))?;
        row.map(|(version, v)| decode_shard(&k, version, &v))
            .transpose()
    }

    async fn list_shards(&self, network: &NetworkKey) -> StoreResult<Vec<StoredShard>> {
        let prefix = format!("{}/", network_storage_key(network));
        let rows = self
            .run(move |b| b.scan(Table::Shards, &prefix))
            .await
            .map_err(map_err(|| format!("shards of {network}")))?;
        rows.iter()
            .map(|(k, version, v)| decode_shard(k, *version, v))
            .collect()
    }

    async fn create_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
    ) -> StoreResult<Version> {
        let k = shard_storage_key(key);
        let bytes = encode(&spec);
        let version = self
            .run(move |b| b.write(Table::Shards, &k, Expect::Absent, Some(bytes)))
            .await
            .map_err(map_err(|| key.to_string()))?;
        self.notify(StoreEvent::Shard(key.clone()));
        Ok(version.to_string())
    }

    async fn update_shard(
        &self,
        key: &ShardKey,
        spec: AllocationShardSpec,
        expected: &Version,
    ) -> StoreResult<Version> {
        let expected = parse_version(&key.to_string(), expected)?;
        let k = shard_storage_key(key);
        let bytes = encode(&spec);
        let version = self
            .run(move |b| b.write(Table::Shards, &k, Expect::Version(expected), Some(bytes)))
            .await
            .map_err(map_err(|| key.to_string()))?;
        self.notify(StoreEvent::Shard(key.clone()));
        Ok(version.to_string())
    }

    async fn create_endpoint(&self, record: EndpointRecord) -> StoreResult<()> {
        let k = record.owner.endpoint_name();
        let bytes = encode(&record);
        let owner = record.owner.clone();
        self.run(move |b| b.write(Table::Endpoints, &k, Expect::Absent, Some(bytes)))
            .await
            .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
        self.notify(StoreEvent::Endpoint(record.owner));
        Ok(())
    }

    async fn get_endpoint(
        &self,
        owner: &OwnerKey,
        _namespace: Option<&str>,
    ) -> StoreResult<Option<EndpointRecord>> {
        let k = owner.endpoint_name();
        let k2 = k.clone();
        let row = self
            .run(move |b| b.get(Table::Endpoints, &k2))
            .await
            .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
        let record: Option<EndpointRecord> = row.map(|(_, v)| decode(&k, &v)).transpose()?;
        // Guard against a (2^-160) name collision: the record must be this owner's.
        Ok(record.filter(|r| &r.owner == owner))
    }

    async fn delete_endpoint(
        &self,
        owner: &OwnerKey,
        _namespace: Option<&str>,
    ) -> StoreResult<bool> {
        let k = owner.endpoint_name();
        let existed = self
            .run(move |b| {
                let existed = b.get(Table::Endpoints, &k)?.is_some();
                if existed {
                    b.write(Table::Endpoints, &k, Expect::Any, None)?;
                }
                Ok(existed)
            })
            .await
            .map_err(map_err(|| format!("endpoint of owner {owner}")))?;
        if existed {
            self.notify(StoreEvent::Endpoint(owner.clone()));
        }
        Ok(existed)
    }

    async fn list_endpoints(&self) -> StoreResult<Vec<Arc<EndpointSummary>>> {
        let mut interner = Interner::default();
        Ok(self
            .read_endpoints(None)
            .await?
            .iter()
            .map(|record| Arc::new(EndpointSummary::of(record, &mut interner)))
            .collect())
    }

    async fn endpoints_of_container(
        &self,
        container_id: &str,
        _namespace: Option<&str>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        let mut records = self.read_endpoints(None).await?;
        records.retain(|r| r.owner.container_id == container_id);
        Ok(records)
    }

    async fn read_endpoints(
        &self,
        network: Option<&NetworkKey>,
    ) -> StoreResult<Vec<EndpointRecord>> {
        let rows = self
            .run(|b| b.scan(Table::Endpoints, ""))
            .await
            .map_err(map_err(|| "endpoints".into()))?;
        let mut records = rows
            .iter()
            .map(|(k, _, v)| decode::<EndpointRecord>(k, v))
            .collect::<StoreResult<Vec<_>>>()?;
        records.retain(|r| network.is_none_or(|n| *n == r.network));
        Ok(records)
    }

    fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }
}

/// Checks `expect` against the current version of a key (shared by the backends).
pub fn check_expect(current: Option<u64>, expect: Expect) -> Result<(), KvError> {
    match (expect, current) {
        (Expect::Any, _) => Ok(()),
        (Expect::Absent, None) => Ok(()),
        (Expect::Absent, Some(_)) => Err(KvError::Exists),
        (Expect::Version(_), None) => Err(KvError::Missing),
        (Expect::Version(v), Some(c)) if v == c => Ok(()),
        (Expect::Version(_), Some(_)) => Err(KvError::Conflict),
    }
}
