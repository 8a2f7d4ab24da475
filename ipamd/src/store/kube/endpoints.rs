//! A watch-fed cache of every DanmEp (a reflector), indexed by object, by container id and
//! by owner fingerprint, so that no request of ipamd lists DanmEps cluster-wide.
//!
//! It is fed by `danm_runtime::index` (a kube-runtime watcher: a fresh list at start and
//! after a 410, then watch events), and by this replica's own writes as soon as they succeed, so that what this
//! replica just wrote is seen at once. It may lag behind other replicas' writes by the
//! watch's delay: callers use it to find records, never to decide that something may be
//! freed (that is confirmed from a fresh read).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use danm_core::OwnerKey;
use danm_crds::DanmEp;
use danm_runtime::index::{Change, Synced, follow_map};
use kube::api::Api;
use kube::{Client, ResourceExt};

use crate::store::summary::{ContainerId, Interner};
use crate::store::{EndpointSummary, StoreError, StoreResult};

/// What the watch says of one DanmEp.
#[derive(Debug)]
enum Seen {
    /// A DanmEp ipamd reads, with its name when it is not the one ipamd gives its owner
    /// (DANM's own records).
    Record {
        summary: Arc<EndpointSummary>,
        other_name: Option<Box<str>>,
    },
    /// One ipamd does not read (namespace, name): whatever was cached of it goes.
    Unreadable(Box<(String, String)>),
}

/// End of a chain.
const END: u32 = u32::MAX;

/// The two ways of finding records, each a map from a 32-bit hash to the first slot of a
/// chain threaded through the entries (every hit is checked against the entry itself). A
/// DanmEp named as ipamd names them (`ep-` and its owner's digest, whose first 8 bytes are
/// the fingerprint) is found by name through the fingerprint chain; any other name is in a
/// map of its own.
#[derive(Clone, Copy)]
enum Chain {
    Container = 0,
    Fingerprint = 1,
}

/// One cached DanmEp.
#[derive(Debug)]
struct Entry {
    summary: Arc<EndpointSummary>,
    next: [u32; 2],
}

/// The fingerprint a DanmEp name written by ipamd (`OwnerKey::endpoint_name`) carries.
fn fingerprint_in_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("ep-").filter(|h| h.len() == 40)?;
    let mut bytes = [0u8; 8];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(u64::from_le_bytes(bytes))
}

/// The records, each stored once in a slot and found through chains of slot numbers:
/// about 300 bytes per DanmEp in all, allocator included (`docs/benchmarks.md`,
/// scale-bench).
#[derive(Debug)]
struct Index {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    heads: [HashMap<u32, u32>; 2],
    /// The slots of DanmEps not named as ipamd names them (DANM's own), by name, and
    /// their names by slot.
    other_names: HashMap<(String, String), u32>,
    other_name_of: HashMap<u32, String>,
    hasher: RandomState,
    /// Bits of a hash kept as a key: all of them, except in tests that force collisions.
    key_mask: u32,
}

impl Default for Index {
    fn default() -> Index {
        Index::with_capacity(0)
    }
}

impl Index {
    fn with_capacity(count: usize) -> Index {
        Index {
            slots: Vec::with_capacity(count),
            free: Vec::new(),
            heads: std::array::from_fn(|_| HashMap::with_capacity(count)),
            other_names: HashMap::new(),
            other_name_of: HashMap::new(),
            hasher: RandomState::new(),
            key_mask: u32::MAX,
        }
    }

    fn key(&self, value: impl Hash) -> u32 {
        self.hasher.hash_one(value) as u32 & self.key_mask
    }

    fn keys(&self, summary: &EndpointSummary) -> [u32; 2] {
        [
            self.key(summary.container()),
            self.key(summary.owner().fingerprint()),
        ]
    }

    fn entry(&self, slot: u32) -> &Entry {
        self.slots[slot as usize]
            .as_ref()
            .expect("chained slots are filled")
    }

    /// The DanmEp name of the entry in `slot`.
    fn name(&self, slot: u32) -> String {
        self.other_name_of
            .get(&slot)
            .cloned()
            .unwrap_or_else(|| self.entry(slot).summary.owner().endpoint_name())
    }

    /// The slots of one chain.
    fn chain(&self, chain: Chain, key: u32) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.heads[chain as usize].get(&key).copied().unwrap_or(END);
        std::iter::from_fn(move || {
            (at != END).then(|| {
                let slot = at;
                at = self.entry(slot).next[chain as usize];
                slot
            })
        })
    }

    /// Caches `summary` under its DanmEp's name: `other_name`, or the one ipamd gives its
    /// owner.
    fn insert(&mut self, summary: Arc<EndpointSummary>, other_name: Option<Box<str>>) {
        let name = other_name.map_or_else(|| summary.owner().endpoint_name(), String::from);
        self.remove(summary.namespace(), &name);
        let keys = self.keys(&summary);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                if self.slots.len() == self.slots.capacity() {
                    // Grow by an eighth, not double: the slots are a good part of the memory.
                    self.slots.reserve_exact(self.slots.len() / 8 + 16);
                }
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        if name != summary.owner().endpoint_name() {
            self.other_name_of.insert(slot, name.clone());
            self.other_names
                .insert((summary.namespace().to_owned(), name), slot);
        }
        let mut next = [END; 2];
        for (chain, key) in keys.into_iter().enumerate() {
            next[chain] = self.heads[chain].insert(key, slot).unwrap_or(END);
        }
        self.slots[slot as usize] = Some(Entry { summary, next });
    }

    fn remove(&mut self, namespace: &str, name: &str) {
        let Some(slot) = self.find_object(namespace, name) else {
            return;
        };
        let keys = self.keys(&self.entry(slot).summary);
        for (chain, key) in keys.into_iter().enumerate() {
            self.unlink(chain, key, slot);
        }
        self.other_names
            .remove(&(namespace.to_owned(), name.to_owned()));
        self.other_name_of.remove(&slot);
        self.slots[slot as usize] = None;
        self.free.push(slot);
    }

    fn find_object(&self, namespace: &str, name: &str) -> Option<u32> {
        if let Some(slot) = self
            .other_names
            .get(&(namespace.to_owned(), name.to_owned()))
        {
            return Some(*slot);
        }
        let fingerprint = fingerprint_in_name(name)?;
        self.chain(Chain::Fingerprint, self.key(fingerprint))
            .find(|slot| {
                let summary = &self.entry(*slot).summary;
                summary.namespace() == namespace
                    && summary.owner().endpoint_name() == name
                    && !self.other_name_of.contains_key(slot)
            })
    }

    fn unlink(&mut self, chain: usize, key: u32, slot: u32) {
        let Some(&head) = self.heads[chain].get(&key) else {
            return;
        };
        let after = self.entry(slot).next[chain];
        if head == slot {
            if after == END {
                self.heads[chain].remove(&key);
            } else {
                self.heads[chain].insert(key, after);
            }
            return;
        }
        let mut at = head;
        while at != END {
            let next = self.entry(at).next[chain];
            if next == slot {
                self.slots[at as usize].as_mut().expect("filled").next[chain] = after;
                return;
            }
            at = next;
        }
    }

    fn of_container(&self, container_id: &str) -> Vec<(Arc<EndpointSummary>, String)> {
        let key = self.key(ContainerId::new(container_id));
        self.chain(Chain::Container, key)
            .filter(|slot| self.entry(*slot).summary.is_of_container(container_id))
            .map(|slot| (Arc::clone(&self.entry(slot).summary), self.name(slot)))
            .collect()
    }

    fn with_fingerprint(&self, fingerprint: u64) -> Vec<Arc<EndpointSummary>> {
        self.chain(Chain::Fingerprint, self.key(fingerprint))
            .map(|slot| &self.entry(slot).summary)
            .filter(|summary| summary.owner().fingerprint() == fingerprint)
            .cloned()
            .collect()
    }
}

/// The cache; see the module overview.
#[derive(Debug)]
pub(super) struct EndpointCache {
    index: RwLock<Index>,
    interner: Arc<Mutex<Interner>>,
    synced: Arc<Synced>,
    /// Removals since the interner was last pruned.
    removals: std::sync::atomic::AtomicUsize,
}

/// Removals after which the interner forgets the texts no record holds any more (the
/// namespaces, nodes and networks that went), besides every relist.
const PRUNE_EVERY: usize = 4096;

/// How long a read waits for the first full list before the store is called unavailable.
const SYNC_WAIT: Duration = Duration::from_secs(30);

impl EndpointCache {
    /// A cache fed by a watch of every DanmEp through `client`; the watch runs until the
    /// returned task is aborted.
    pub(super) fn start(client: Client) -> (Arc<EndpointCache>, tokio::task::AbortHandle) {
        let cache = Arc::new(EndpointCache {
            index: RwLock::default(),
            interner: Arc::default(),
            synced: Arc::new(Synced::new(1)),
            removals: Default::default(),
        });
        let fed = Arc::clone(&cache);
        let interner = Arc::clone(&cache.interner);
        // Each DanmEp becomes its summary as it arrives: a relist never holds every DanmEp
        // in full.
        let task = follow_map(
            Api::<DanmEp>::all(client),
            "DanmEp",
            Arc::clone(&cache.synced),
            move |ep| seen(ep, &interner),
            move |change| fed.apply(change),
        );
        (cache, task)
    }

    fn apply(&self, change: Change<Seen>) {
        match change {
            Change::Relisted(endpoints) => {
                let mut fresh = Index::with_capacity(endpoints.len());
                for seen in endpoints {
                    if let Seen::Record {
                        summary,
                        other_name,
                    } = seen
                    {
                        fresh.insert(summary, other_name);
                    }
                }
                *self.index.write().expect("lock") = fresh;
                self.interner.lock().expect("lock").prune();
            }
            Change::Applied(Seen::Record {
                summary,
                other_name,
            }) => self
                .index
                .write()
                .expect("lock")
                .insert(summary, other_name),
            Change::Applied(Seen::Unreadable(at)) | Change::Deleted(Seen::Unreadable(at)) => {
                self.remove(&at.0, &at.1)
            }
            Change::Deleted(Seen::Record {
                summary,
                other_name,
            }) => {
                let name = other_name.map_or_else(|| summary.owner().endpoint_name(), String::from);
                self.remove(summary.namespace(), &name);
            }
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

    /// Records what this replica just wrote (a DanmEp named as ipamd names them).
    pub(super) fn insert(&self, record: &crate::store::EndpointRecord) {
        let summary = EndpointSummary::of(record, &mut self.interner.lock().expect("lock"));
        self.index
            .write()
            .expect("lock")
            .insert(Arc::new(summary), None);
    }

    /// Forgets what this replica just deleted.
    pub(super) fn remove(&self, namespace: &str, name: &str) {
        self.index.write().expect("lock").remove(namespace, name);
        let removals = self
            .removals
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if (removals + 1).is_multiple_of(PRUNE_EVERY) {
            self.interner.lock().expect("lock").prune();
        }
    }

    /// Every record.
    pub(super) fn all(&self) -> Vec<Arc<EndpointSummary>> {
        self.index
            .read()
            .expect("lock")
            .slots
            .iter()
            .flatten()
            .map(|e| Arc::clone(&e.summary))
            .collect()
    }

    /// The records of a container, with their DanmEps' names.
    pub(super) fn of_container(&self, container_id: &str) -> Vec<(Arc<EndpointSummary>, String)> {
        self.index.read().expect("lock").of_container(container_id)
    }

    /// The records of an owner fingerprint.
    pub(super) fn with_fingerprint(&self, fingerprint: u64) -> Vec<Arc<EndpointSummary>> {
        self.index
            .read()
            .expect("lock")
            .with_fingerprint(fingerprint)
    }

    /// The namespaces holding a DanmEp of `owner`.
    pub(super) fn namespaces_of(&self, owner: &OwnerKey) -> Vec<String> {
        let mut namespaces: Vec<String> = self
            .with_fingerprint(owner.fingerprint())
            .into_iter()
            .filter(|s| s.is_owned_by(owner))
            .map(|s| s.namespace().to_owned())
            .collect();
        namespaces.sort();
        namespaces.dedup();
        namespaces
    }
}

/// What the watch says of `ep` (a summary, or unreadable: logged).
fn seen(ep: DanmEp, interner: &Mutex<Interner>) -> Seen {
    let name = ep.name_any();
    let namespace = ep.namespace().unwrap_or_default();
    match super::objects::to_record(ep) {
        Ok(record) => {
            let other_name = (record.owner.endpoint_name() != name).then(|| name.into());
            let summary = EndpointSummary::of(&record, &mut interner.lock().expect("lock"));
            Seen::Record {
                summary: Arc::new(summary),
                other_name,
            }
        }
        Err(e) => {
            tracing::debug!(danmep = %name, error = %e, "DanmEp not cached");
            Seen::Unreadable(Box::new((namespace, name)))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use danm_core::{NetworkKey, NetworkKind};
    use danm_crds::{DanmEpIface, DanmEpSpec};

    use super::*;
    use crate::store::EndpointRecord;

    fn summary(namespace: &str, container_id: &str, ifname: &str) -> Arc<EndpointSummary> {
        let record = EndpointRecord {
            owner: OwnerKey::new(container_id, ifname).unwrap(),
            network: NetworkKey::new(NetworkKind::DanmNet, namespace, "net"),
            namespace: namespace.into(),
            spec: DanmEpSpec {
                interface: DanmEpIface {
                    name: ifname.into(),
                    address: "10.0.0.1/24".into(),
                    ..Default::default()
                },
                ..Default::default()
            },
        };
        Arc::new(EndpointSummary::of(&record, &mut Interner::default()))
    }

    /// Random inserts, replacements and removals against a plain map, with every hash cut
    /// to 3 bits so that chains are long and every kind of unlink (head, middle, tail) runs;
    /// a fifth of the DanmEps are named otherwise than ipamd names them.
    #[test]
    fn chains_agree_with_a_plain_map_under_forced_collisions() {
        let mut index = Index {
            key_mask: 0b111,
            ..Index::default()
        };
        type Model = BTreeMap<(String, String), (Arc<EndpointSummary>, Option<Box<str>>)>;
        let mut model = Model::new();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..4_000 {
            let namespace = format!("ns{}", next(3));
            let container = format!("c{}", next(40));
            let ifname = format!("net{}", next(3));
            let legacy = next(5) == 0;
            let s = summary(&namespace, &container, &ifname);
            let name = if legacy {
                format!("legacy-{container}-{ifname}")
            } else {
                s.owner().endpoint_name()
            };
            if next(3) == 0 {
                index.remove(&namespace, &name);
                model.remove(&(namespace, name));
            } else {
                let other = legacy.then(|| name.clone().into_boxed_str());
                index.insert(Arc::clone(&s), other.clone());
                model.insert((namespace, name), (s, other));
            }
        }
        let live: Vec<_> = index.slots.iter().flatten().collect();
        assert_eq!(live.len(), model.len());
        for ((namespace, name), (s, _)) in &model {
            let slot = index.find_object(namespace, name).expect("found by object");
            assert_eq!(index.entry(slot).summary, *s);
            assert_eq!(index.name(slot), *name);
            let owner = s.owner();
            let of_container = index.of_container(&owner.container_id);
            assert_eq!(
                of_container.len(),
                model
                    .values()
                    .filter(|(o, _)| o.is_of_container(&owner.container_id))
                    .count()
            );
            assert!(of_container.iter().any(|(o, n)| o == s && n == name));
            let with_fingerprint = index.with_fingerprint(owner.fingerprint());
            assert_eq!(
                with_fingerprint.len(),
                model
                    .values()
                    .filter(|(o, _)| o.is_owned_by(&owner))
                    .count()
            );
        }
        for (namespace, name) in model.keys().cloned().collect::<Vec<_>>() {
            index.remove(&namespace, &name);
        }
        assert!(index.slots.iter().all(Option::is_none));
        assert!(index.heads.iter().all(HashMap::is_empty));
        assert!(index.other_names.is_empty() && index.other_name_of.is_empty());
    }

    #[test]
    fn the_fingerprint_is_read_from_the_name_ipamd_gives() {
        let owner = OwnerKey::new("c1", "eth0").unwrap();
        assert_eq!(
            fingerprint_in_name(&owner.endpoint_name()),
            Some(owner.fingerprint())
        );
        for other in [
            "ep-",
            "ep-zz",
            "pod-1-abcdef",
            &format!("{}0", owner.endpoint_name()),
        ] {
            assert_eq!(fingerprint_in_name(other), None, "{other}");
        }
    }

    #[test]
    fn a_record_seen_again_replaces_itself_and_an_unreadable_one_is_forgotten() {
        let cache = EndpointCache {
            index: RwLock::default(),
            interner: Arc::default(),
            synced: Arc::new(Synced::new(1)),
            removals: Default::default(),
        };
        let s = summary("ns", "c1", "eth0");
        let name = s.owner().endpoint_name();
        for _ in 0..2 {
            cache.apply(Change::Applied(Seen::Record {
                summary: Arc::clone(&s),
                other_name: None,
            }));
        }
        assert_eq!(cache.all().len(), 1);
        assert_eq!(cache.namespaces_of(&s.owner()), ["ns"]);
        cache.apply(Change::Applied(Seen::Unreadable(Box::new((
            "ns".into(),
            name.clone(),
        )))));
        assert!(
            cache.all().is_empty(),
            "an edit ipamd cannot read drops the record"
        );
        cache.apply(Change::Relisted(vec![Seen::Record {
            summary: Arc::clone(&s),
            other_name: None,
        }]));
        assert_eq!(cache.of_container("c1").len(), 1);
        cache.apply(Change::Deleted(Seen::Record {
            summary: s,
            other_name: None,
        }));
        assert!(cache.all().is_empty());
    }
}
