//! A watch-fed cache of every DanmEp (a reflector), indexed by object, by container id and
//! by owner fingerprint, so that no request of ipamd lists DanmEps cluster-wide.
//!
//! It is fed by `danm_runtime::index` (a kube-runtime watcher: a fresh list at start and
//! after a 410, then watch events), and by this replica's own writes as soon as they succeed, so that what this
//! replica just wrote is seen at once. It may lag behind other replicas' writes by the
//! watch's delay: callers use it to find records, never to decide that something may be
//! freed (that is confirmed from a fresh read).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use danm_core::OwnerKey;
use danm_crds::DanmEp;
use danm_runtime::index::{Change, Synced, follow_map};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::store::{EndpointRecord, StoreError, StoreResult};

/// Namespace and name of a DanmEp.
type ObjectRef = (String, String);

/// The records, each stored once in a slot and found through small indexes of slot numbers.
#[derive(Debug, Default)]
struct Index {
    slots: Vec<Option<Arc<EndpointRecord>>>,
    free: Vec<u32>,
    by_object: HashMap<ObjectRef, u32>,
    by_container: HashMap<String, Vec<u32>>,
    by_fingerprint: HashMap<u64, Vec<u32>>,
}

impl Index {
    fn insert(&mut self, record: EndpointRecord) {
        let at = (record.namespace.clone(), record.owner.endpoint_name());
        self.remove(&at);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        self.by_container
            .entry(record.owner.container_id.clone())
            .or_default()
            .push(slot);
        self.by_fingerprint
            .entry(record.owner.fingerprint())
            .or_default()
            .push(slot);
        self.by_object.insert(at, slot);
        self.slots[slot as usize] = Some(Arc::new(record));
    }

    fn remove(&mut self, at: &ObjectRef) {
        let Some(slot) = self.by_object.remove(at) else {
            return;
        };
        let Some(old) = self.slots[slot as usize].take() else {
            return;
        };
        self.free.push(slot);
        fn forget<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Vec<u32>>, key: K, slot: u32) {
            if let Some(slots) = map.get_mut(&key) {
                slots.retain(|s| *s != slot);
                if slots.is_empty() {
                    map.remove(&key);
                }
            }
        }
        forget(&mut self.by_container, old.owner.container_id.clone(), slot);
        forget(&mut self.by_fingerprint, old.owner.fingerprint(), slot);
    }

    fn collect<'a>(&self, slots: impl IntoIterator<Item = &'a u32>) -> Vec<EndpointRecord> {
        slots
            .into_iter()
            .filter_map(|s| self.slots[*s as usize].as_deref().cloned())
            .collect()
    }
}

/// The cache; see the module overview.
#[derive(Debug)]
pub(super) struct EndpointCache {
    index: RwLock<Index>,
    synced: Arc<Synced>,
}

/// How long a read waits for the first full list before the store is called unavailable.
const SYNC_WAIT: Duration = Duration::from_secs(30);

impl EndpointCache {
    /// A cache fed by a watch of every DanmEp through `client`; the watch runs until the
    /// returned task is aborted.
    pub(super) fn start(client: Client) -> (Arc<EndpointCache>, tokio::task::AbortHandle) {
        let cache = Arc::new(EndpointCache {
            index: RwLock::default(),
            synced: Arc::new(Synced::new(1)),
        });
        let fed = Arc::clone(&cache);
        // Each DanmEp becomes its small record as it arrives: a relist never holds every
        // DanmEp in full.
        let task = follow_map(
            Api::<DanmEp>::all(client),
            "DanmEp",
            Arc::clone(&cache.synced),
            |ep| {
                (
                    (ep.namespace().unwrap_or_default(), ep.name_any()),
                    readable(ep),
                )
            },
            move |change| fed.apply(change),
        );
        (cache, task)
    }

    fn apply(&self, change: Change<(ObjectRef, Option<EndpointRecord>)>) {
        match change {
            Change::Relisted(endpoints) => {
                let mut fresh = Index::default();
                for record in endpoints.into_iter().filter_map(|(_, record)| record) {
                    fresh.insert(record);
                }
                *self.index.write().expect("lock") = fresh;
            }
            Change::Applied((_, Some(record))) => self.insert(record),
            Change::Applied((_, None)) => {}
            Change::Deleted(((namespace, name), _)) => self.remove(&namespace, &name),
        }
    }

    /// Waits (up to 30 s) for the first full list.
    pub(super) async fn synced(&self) -> StoreResult<()> {
        match tokio::time::timeout(SYNC_WAIT, self.synced.listed()).await {
            Ok(()) => Ok(()),
            Err(_) => Err(StoreError::Unavailable(
                "the DanmEp cache has not listed the API server's DanmEps yet".into(),
            )),
        }
    }

    /// Whether the first full list is in.
    pub(super) fn is_synced(&self) -> bool {
        self.synced.is_synced()
    }

    /// Records what this replica just wrote.
    pub(super) fn insert(&self, record: EndpointRecord) {
        self.index.write().expect("lock").insert(record);
    }

    /// Forgets what this replica just deleted.
    pub(super) fn remove(&self, namespace: &str, name: &str) {
        self.index
            .write()
            .expect("lock")
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Every record.
    pub(super) fn all(&self) -> Vec<Arc<EndpointRecord>> {
        self.index
            .read()
            .expect("lock")
            .slots
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The records of a container.
    pub(super) fn of_container(&self, container_id: &str) -> Vec<EndpointRecord> {
        let index = self.index.read().expect("lock");
        index.collect(index.by_container.get(container_id).into_iter().flatten())
    }

    /// The records of an owner fingerprint.
    pub(super) fn with_fingerprint(&self, fingerprint: u64) -> Vec<EndpointRecord> {
        let index = self.index.read().expect("lock");
        index.collect(index.by_fingerprint.get(&fingerprint).into_iter().flatten())
    }

    /// The namespaces holding a DanmEp of `owner`.
    pub(super) fn namespaces_of(&self, owner: &OwnerKey) -> Vec<String> {
        let mut namespaces: Vec<String> = self
            .with_fingerprint(owner.fingerprint())
            .into_iter()
            .filter(|r| &r.owner == owner)
            .map(|r| r.namespace)
            .collect();
        namespaces.dedup();
        namespaces
    }
}

/// The record of a DanmEp, or None (logged) for one ipamd cannot read (not written by it).
fn readable(ep: DanmEp) -> Option<EndpointRecord> {
    let name = ep.name_any();
    match super::objects::to_record(ep) {
        Ok(record) => Some(record),
        Err(e) => {
            tracing::debug!(danmep = %name, error = %e, "DanmEp not cached");
            None
        }
    }
}
