//! The status writer: one elected ipamd replica writes each network's `status` (its pools'
//! capacity and use, the `Ready` condition and why), off the allocation path.
//!
//! While it holds the Lease, the writer follows the three network kinds, every
//! AllocationShard (kept as its [`ShardFacts`]: a few numbers, not its payload) and every
//! node's NodeLinkReport (netwatcher's, summed into `status.links`) with watches. A change marks its network; a marked network's status is computed by
//! `danm_core::network::status` and written through the `status` subresource (the whole
//! status replaced, on the condition that the object is the one last seen: its
//! resourceVersion) only when it differs from the stored one, at
//! most once per `interval` per network and `writes_per_second` in all. Nothing here is on
//! an RPC's path: the engine never waits for it, and a failed write is retried later.
//!
//! Every status write is a watch event for whoever watches networks (every ipamd, and each
//! node's netwatcher and policer): the two limits bound that fan-out, whatever the churn.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use danm_core::hostlinks::report::summary;
use danm_core::network::status::{self as decide, ShardFacts};
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{
    AllocationShard, ClusterNetwork, ClusterNetworkSpec, DanmNet, DanmNetSpec, NetworkSpec,
    NetworkStatus, NodeLinkReport, NodeLinkReportSpec, TenantNetwork, TenantNetworkSpec,
};
use danm_runtime::TermEnding;
use danm_runtime::index::{Change, Synced, follow_map};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// How often and how much the writer writes.
#[derive(Clone, Copy, Debug)]
pub struct StatusConfig {
    /// Least time between two writes of one network's status.
    pub interval: Duration,
    /// Most status writes per second, all networks together.
    pub writes_per_second: u32,
}

/// The writer's counters.
#[derive(Clone, Debug, Default)]
pub struct StatusMetrics {
    /// Status writes the API server accepted.
    pub writes: Counter,
    /// Status writes that failed (retried later).
    pub failures: Counter,
}

impl StatusMetrics {
    /// Adds the counters to ipamd's registry.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "status_writes",
            "Network status writes the API server accepted (by the elected status writer)",
            self.writes.clone(),
        );
        registry.register(
            "status_write_failures",
            "Network status writes that failed and are retried later",
            self.failures.clone(),
        );
    }
}

/// One network as the writer keeps it.
#[derive(Clone, Debug)]
struct Network {
    key: NetworkKey,
    uid: String,
    /// The object's resourceVersion when last seen: the precondition of a status write.
    resource_version: String,
    generation: Option<i64>,
    spec: NetworkSpec,
    status: Option<NetworkStatus>,
}

/// A change the watches hand to the writer.
enum Update {
    Networks(NetworkKind, Change<Box<Network>>),
    Shards(Change<(String, ShardFacts)>),
    /// A node's NodeLinkReport (node name, report).
    Links(Change<(String, NodeLinkReportSpec)>),
}

/// What the writer knows: networks, shards by network, and which networks to look at.
#[derive(Default)]
struct Mirror {
    networks: BTreeMap<NetworkKey, Network>,
    /// `namespace/name` of a shard -> its facts.
    shards: HashMap<String, ShardFacts>,
    /// Network -> the shards that name it.
    by_network: HashMap<NetworkKey, BTreeSet<String>>,
    /// Node -> its netwatcher's link report.
    reports: BTreeMap<String, NodeLinkReportSpec>,
    marked: BTreeSet<NetworkKey>,
    last_write: HashMap<NetworkKey, Instant>,
}

impl Mirror {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Networks(kind, Change::Relisted(all)) => {
                self.networks.retain(|k, _| k.kind != kind);
                for net in all {
                    self.marked.insert(net.key.clone());
                    self.networks.insert(net.key.clone(), *net);
                }
            }
            Update::Networks(_, Change::Applied(net)) => {
                self.marked.insert(net.key.clone());
                self.networks.insert(net.key.clone(), *net);
            }
            Update::Networks(_, Change::Deleted(net)) => {
                self.networks.remove(&net.key);
                self.marked.remove(&net.key);
                self.last_write.remove(&net.key);
            }
            Update::Shards(Change::Relisted(all)) => {
                self.shards.clear();
                self.by_network.clear();
                self.marked.extend(self.networks.keys().cloned());
                for (id, facts) in all {
                    self.put_shard(id, facts);
                }
            }
            Update::Shards(Change::Applied((id, facts))) => self.put_shard(id, facts),
            Update::Shards(Change::Deleted((id, _))) => self.remove_shard(&id),
            Update::Links(Change::Relisted(all)) => {
                let before = std::mem::take(&mut self.reports);
                self.reports = all.into_iter().collect();
                let named: Vec<NodeLinkReportSpec> = before.into_values().collect();
                self.mark_reported(named.iter());
                let now: Vec<NodeLinkReportSpec> = self.reports.values().cloned().collect();
                self.mark_reported(now.iter());
            }
            Update::Links(Change::Applied((node, report))) => {
                let before = self.reports.insert(node, report.clone());
                self.mark_reported(before.iter().chain([&report]));
            }
            Update::Links(Change::Deleted((node, _))) => {
                let before = self.reports.remove(&node);
                self.mark_reported(before.iter());
            }
        }
    }

    /// Marks every network the reports name.
    fn mark_reported<'a>(&mut self, reports: impl Iterator<Item = &'a NodeLinkReportSpec>) {
        let mut named: BTreeSet<&str> = BTreeSet::new();
        for report in reports {
            named.extend(report.ready.iter().map(String::as_str));
            named.extend(report.failing.iter().map(|f| f.network.as_str()));
        }
        if named.is_empty() {
            return;
        }
        for key in self.networks.keys() {
            if named.contains(key.to_string().as_str()) {
                self.marked.insert(key.clone());
            }
        }
    }

    fn put_shard(&mut self, id: String, facts: ShardFacts) {
        self.remove_shard(&id);
        if let Some(network) = &facts.network {
            self.marked.insert(network.clone());
            self.by_network
                .entry(network.clone())
                .or_default()
                .insert(id.clone());
        }
        self.shards.insert(id, facts);
    }

    fn remove_shard(&mut self, id: &str) {
        let Some(old) = self.shards.remove(id) else {
            return;
        };
        if let Some(network) = old.network {
            self.marked.insert(network.clone());
            if let Some(ids) = self.by_network.get_mut(&network) {
                ids.remove(id);
                if ids.is_empty() {
                    self.by_network.remove(&network);
                }
            }
        }
    }

    /// The status `key` should show, with its transition times; None when it need not be
    /// written (unknown network, or nothing but times would change).
    fn wanted(&self, key: &NetworkKey, now: &str) -> Option<(Network, NetworkStatus)> {
        let net = self.networks.get(key)?;
        let shards = self
            .by_network
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.shards.get(id));
        let tally = decide::tally(&net.spec, key, &net.uid, shards);
        let links = summary(key, self.reports.iter().map(|(n, r)| (n.as_str(), r)));
        let desired = decide::desired(key, &net.spec, net.generation, &tally, links);
        if !decide::differs(net.status.as_ref(), &desired) {
            return None;
        }
        let status = decide::settle(net.status.as_ref(), desired, now);
        Some((net.clone(), status))
    }

    /// The marked networks whose last write is at least `interval` old, at most `budget`
    /// of them, unmarked; the others stay marked.
    fn due(&mut self, interval: Duration, budget: usize, at: Instant) -> Vec<NetworkKey> {
        let due: Vec<NetworkKey> = self
            .marked
            .iter()
            .filter(|k| {
                self.last_write
                    .get(*k)
                    .is_none_or(|t| at.duration_since(*t) >= interval)
            })
            .take(budget)
            .cloned()
            .collect();
        for key in &due {
            self.marked.remove(key);
        }
        due
    }
}

fn network<K>(
    kind: NetworkKind,
    object: &K,
    spec: &NetworkSpec,
    status: Option<&NetworkStatus>,
) -> Box<Network>
where
    K: Resource,
{
    let meta = object.meta();
    Box::new(Network {
        key: NetworkKey::new(
            kind,
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        ),
        uid: meta.uid.clone().unwrap_or_default(),
        resource_version: meta.resource_version.clone().unwrap_or_default(),
        generation: meta.generation,
        spec: spec.clone(),
        status: status.cloned(),
    })
}

/// One term of the writer: follows networks and shards and writes statuses until `ending`.
pub async fn write_while_leading(
    client: Client,
    config: StatusConfig,
    metrics: Arc<StatusMetrics>,
    ending: TermEnding,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Update>();
    let synced = Arc::new(Synced::new(5));
    let sender = |kind: NetworkKind| {
        let tx = tx.clone();
        move |change| {
            let _ = tx.send(Update::Networks(kind, change));
        }
    };
    let shards_tx = tx.clone();
    let links_tx = tx.clone();
    let follows = [
        follow_map(
            Api::<DanmNet>::all(client.clone()),
            "DanmNet",
            Arc::clone(&synced),
            |o| network(NetworkKind::DanmNet, &o, &o.spec.network, o.status.as_ref()),
            sender(NetworkKind::DanmNet),
        ),
        follow_map(
            Api::<TenantNetwork>::all(client.clone()),
            "TenantNetwork",
            Arc::clone(&synced),
            |o| {
                network(
                    NetworkKind::TenantNetwork,
                    &o,
                    &o.spec.network,
                    o.status.as_ref(),
                )
            },
            sender(NetworkKind::TenantNetwork),
        ),
        follow_map(
            Api::<ClusterNetwork>::all(client.clone()),
            "ClusterNetwork",
            Arc::clone(&synced),
            |o| {
                network(
                    NetworkKind::ClusterNetwork,
                    &o,
                    &o.spec.network,
                    o.status.as_ref(),
                )
            },
            sender(NetworkKind::ClusterNetwork),
        ),
        follow_map(
            Api::<AllocationShard>::all(client.clone()),
            "AllocationShard",
            Arc::clone(&synced),
            |o| {
                let id = format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any());
                (id, ShardFacts::of(&o.spec))
            },
            move |change| {
                let _ = shards_tx.send(Update::Shards(change));
            },
        ),
        follow_map(
            Api::<NodeLinkReport>::all(client.clone()),
            "NodeLinkReport",
            Arc::clone(&synced),
            |o| (o.name_any(), o.spec),
            move |change| {
                let _ = links_tx.send(Update::Links(change));
            },
        ),
    ];
    drop(tx);
    tracing::info!(
        interval = ?config.interval,
        writes_per_second = config.writes_per_second,
        "status writer started"
    );
    let mut mirror = Mirror::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = ending.clone().wait();
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            update = rx.recv() => match update {
                Some(update) => mirror.apply(update),
                None => break,
            },
            _ = tick.tick() => {
                // Counts from part of the shards would be wrong: wait for every list, and
                // take in what is queued (a kind is counted as listed once its list is
                // sent, before this loop has read it).
                while let Ok(update) = rx.try_recv() {
                    mirror.apply(update);
                }
                if synced.is_synced() {
                    write_due(&client, &mut mirror, config, &metrics, &ending).await;
                }
            }
        }
    }
    for follow in follows {
        follow.abort();
    }
    tracing::info!("status writer stopped");
}

/// Writes the statuses that are due, within one second's budget.
async fn write_due(
    client: &Client,
    mirror: &mut Mirror,
    config: StatusConfig,
    metrics: &StatusMetrics,
    ending: &TermEnding,
) {
    let now = Instant::now();
    let stamp = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
    let budget = config.writes_per_second.max(1) as usize;
    // Networks that need no write do not use the budget: look further until it is spent.
    let mut written = 0;
    while written < budget {
        let due = mirror.due(config.interval, budget - written, now);
        if due.is_empty() {
            return;
        }
        let mut due = due.into_iter();
        while let Some(key) = due.next() {
            if ending.is_ending() {
                // The Lease is lost or ipamd stops: no more writes in this term.
                mirror.marked.insert(key);
                mirror.marked.extend(due);
                return;
            }
            let Some((net, status)) = mirror.wanted(&key, &stamp) else {
                continue;
            };
            written += 1;
            match patch_status(client, &net, &status).await {
                Ok(()) => {
                    metrics.writes.inc();
                    mirror.last_write.insert(key.clone(), now);
                    // The watch brings the stored status back; until then, this one.
                    if let Some(n) = mirror.networks.get_mut(&key) {
                        n.status = Some(status);
                    }
                }
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {
                    // Gone, or changed since last seen (another writer, a new spec, a
                    // network created again): the watch brings the object and marks it.
                    tracing::debug!(network = %key, reason = %e.message, "status not written");
                }
                Err(e) => {
                    metrics.failures.inc();
                    mirror.last_write.insert(key.clone(), now);
                    mirror.marked.insert(key.clone());
                    tracing::warn!(network = %key, error = %e, "cannot write the network's status; retrying later");
                }
            }
        }
    }
}

/// Replaces the network's whole status (a field that is gone must go: a merge patch would
/// keep it), on the condition that the object is still the one last seen (its
/// resourceVersion: a network changed or created again under the same name answers 409).
async fn patch_status(client: &Client, net: &Network, status: &NetworkStatus) -> kube::Result<()> {
    let metadata = ObjectMeta {
        name: Some(net.key.name.clone()),
        namespace: net.key.kind.namespaced().then(|| net.key.namespace.clone()),
        resource_version: Some(net.resource_version.clone()),
        ..ObjectMeta::default()
    };
    // The spec is the one last seen; the status subresource ignores it.
    let network = net.spec.clone();
    let status = Some(status.clone());
    let params = PostParams::default();
    let name = &net.key.name;
    let namespace = &net.key.namespace;
    match net.key.kind {
        NetworkKind::DanmNet => {
            let object = DanmNet {
                metadata,
                spec: DanmNetSpec { network },
                status,
            };
            Api::<DanmNet>::namespaced(client.clone(), namespace)
                .replace_status(name, &params, &object)
                .await?;
        }
        NetworkKind::TenantNetwork => {
            let object = TenantNetwork {
                metadata,
                spec: TenantNetworkSpec { network },
                status,
            };
            Api::<TenantNetwork>::namespaced(client.clone(), namespace)
                .replace_status(name, &params, &object)
                .await?;
        }
        NetworkKind::ClusterNetwork => {
            let object = ClusterNetwork {
                metadata,
                spec: ClusterNetworkSpec { network },
                status,
            };
            Api::<ClusterNetwork>::all(client.clone())
                .replace_status(name, &params, &object)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use danm_crds::NetworkOptions;

    fn net(name: &str) -> Box<Network> {
        Box::new(Network {
            key: NetworkKey::new(NetworkKind::DanmNet, "telco", name),
            uid: format!("uid-{name}"),
            generation: Some(1),
            spec: NetworkSpec {
                network_id: name.into(),
                options: NetworkOptions {
                    cidr: Some("10.0.0.0/24".into()),
                    ..NetworkOptions::default()
                },
                ..NetworkSpec::default()
            },
            status: None,
            resource_version: "1".into(),
        })
    }

    #[test]
    fn a_marked_network_waits_its_interval_and_the_budget_bounds_a_second() {
        let mut mirror = Mirror::default();
        mirror.apply(Update::Networks(
            NetworkKind::DanmNet,
            Change::Relisted(vec![net("a"), net("b"), net("c")]),
        ));
        let start = Instant::now();
        let interval = Duration::from_secs(30);
        // Three marked, a budget of two: two now, the third stays marked.
        let first = mirror.due(interval, 2, start);
        assert_eq!(first.len(), 2);
        assert_eq!(mirror.marked.len(), 1);
        for key in &first {
            mirror.last_write.insert(key.clone(), start);
        }
        // A written network marked again waits out its interval; the other one goes.
        mirror.marked.insert(first[0].clone());
        let second = mirror.due(interval, 2, start + Duration::from_secs(1));
        assert_eq!(second.len(), 1);
        assert!(!second.contains(&first[0]));
        assert!(mirror.marked.contains(&first[0]));
        let later = mirror.due(interval, 2, start + interval);
        assert_eq!(later, vec![first[0].clone()]);
    }

    #[test]
    fn only_a_status_that_differs_is_written_and_a_deleted_network_is_forgotten() {
        let mut mirror = Mirror::default();
        mirror.apply(Update::Networks(
            NetworkKind::DanmNet,
            Change::Applied(net("a")),
        ));
        let key = NetworkKey::new(NetworkKind::DanmNet, "telco", "a");
        let (_, status) = mirror.wanted(&key, "2026-12-07T10:00:00Z").unwrap();
        assert_eq!(status.ipv4.as_ref().unwrap().used, 0);
        // Stored as computed: nothing to write, whatever the time.
        let mut stored = net("a");
        stored.status = Some(status);
        mirror.apply(Update::Networks(
            NetworkKind::DanmNet,
            Change::Applied(stored),
        ));
        assert!(mirror.wanted(&key, "2026-12-07T11:00:00Z").is_none());
        // A shard of it marks it, and its count changes the status.
        let mut bits = danm_core::ShardBits::new();
        bits.insert(1, 7).unwrap();
        let encoded = bits.encode();
        let spec = danm_crds::AllocationShardSpec {
            network: danm_crds::ShardNetworkRef {
                kind: "DanmNet".into(),
                namespace: "telco".into(),
                name: "a".into(),
                uid: "uid-a".into(),
            },
            family: "IPv4".into(),
            cidr: "10.0.0.0/24".into(),
            size: 256,
            allocated: encoded.allocated,
            crc32: encoded.crc32,
            payload: encoded.payload,
            ..Default::default()
        };
        mirror.marked.clear();
        mirror.apply(Update::Shards(Change::Applied((
            "telco/dn.a.v4.0".into(),
            ShardFacts::of(&spec),
        ))));
        assert!(mirror.marked.contains(&key));
        let (_, status) = mirror.wanted(&key, "2026-12-07T12:00:00Z").unwrap();
        assert_eq!(status.ipv4.unwrap().used, 1);
        // Deleted: unmarked and forgotten.
        mirror.apply(Update::Networks(
            NetworkKind::DanmNet,
            Change::Deleted(net("a")),
        ));
        assert!(!mirror.marked.contains(&key) && mirror.wanted(&key, "x").is_none());
    }
}
