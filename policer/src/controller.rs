//! The controller: follows namespaces, pods, DanmEps and DanmNetworkPolicies, and keeps the
//! table of every pod of this node as the policies decide. After any change (coalesced), a
//! round recomputes the decisions of the pods of this node the changes may affect
//! ([`Index::take_changed`]) and applies those that differ from what it last applied; a
//! failed apply keeps the pod's previous table and is retried every round until it
//! succeeds. The first round, once every kind is listed, applies every local pod (removing
//! tables no policy asks for any more), so a restart converges.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use danm_core::netpol::PodRules;
use danm_crds::{ClusterNetwork, DanmEp, DanmNet, DanmNetworkPolicy, TenantNetwork};
use danm_runtime::index::{Change, Synced, follow_map};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::events::Reporter;
use tokio::sync::Notify;

use crate::gate::{Gate, Rounds, SandboxKey, SandboxState, ServeError};
use crate::index::{self, Index, PodKey};
use crate::metrics::Metrics;

/// How the controller runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name: the pods whose DanmEps name it as host are this policer's.
    pub node: String,
    /// The `nft` program (None: `nft` on the PATH).
    pub nft: Option<PathBuf>,
    /// The folder of the pods' network namespaces: a DanmEp's `netns` is entered only when
    /// it names an entry of it (`danm_core::names::netns_in`).
    pub netns_root: PathBuf,
    /// How long changes are gathered before a round.
    pub settle: Duration,
    /// How many pods' tables are applied at once (each an `nft` process).
    pub parallel: usize,
    /// The node's addresses: traffic between a pod and its node is always allowed, as
    /// Kubernetes requires (kubelet's probes).
    pub node_addresses: Vec<std::net::IpAddr>,
    /// The gate's socket, where the CNI plugin waits for a new sandbox's table
    /// ([`crate::gate`]); None: no gate.
    pub gate_socket: Option<PathBuf>,
    /// How long a gate call may wait.
    pub gate_wait: Duration,
}

/// Runs until `shutdown` completes, counting what it does in `metrics`; fails only when the
/// gate cannot serve.
pub async fn run(
    client: kube::Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let index = Arc::new(Mutex::new(Index::new(&config.node)));
    let changed = Arc::new(Notify::new());
    let rounds = Arc::new(Rounds::default());
    let stop_gate = Arc::new(Notify::new());
    let mut gate = config.gate_socket.clone().map(|socket| {
        let gate = Gate {
            index: Arc::clone(&index),
            changed: Arc::clone(&changed),
            rounds: Arc::clone(&rounds),
            node: config.node.clone(),
            wait: config.gate_wait,
            metrics: Arc::clone(&metrics),
        };
        let stop = Arc::clone(&stop_gate);
        tokio::spawn(async move { crate::gate::serve(&socket, gate, stop.notified()).await })
    });
    let synced = Arc::new(Synced::new(4));
    let networks_synced = Arc::new(Synced::new(3));
    let reporter = Reporter {
        controller: "danm-policer".into(),
        instance: Some(config.node.clone()),
    };
    let tasks = [
        follow_kind(
            Api::<Namespace>::all(client.clone()),
            "Namespace",
            &synced,
            &index,
            &changed,
            index::namespace,
            Index::on_namespace,
        ),
        follow_kind(
            Api::<Pod>::all(client.clone()),
            "Pod",
            &synced,
            &index,
            &changed,
            index::pod,
            Index::on_pod,
        ),
        follow_kind(
            Api::<DanmEp>::all(client.clone()),
            "DanmEp",
            &synced,
            &index,
            &changed,
            index::endpoint,
            Index::on_endpoint,
        ),
        follow_kind(
            Api::<DanmNetworkPolicy>::all(client.clone()),
            "DanmNetworkPolicy",
            &synced,
            &index,
            &changed,
            index::policy,
            Index::on_policy,
        ),
        // The networks, only to say when a policy names one that does not exist: rounds do
        // not wait for them (a watch that cannot list them holds no table back).
        follow_kind(
            Api::<DanmNet>::all(client.clone()),
            "DanmNet",
            &networks_synced,
            &index,
            &changed,
            index::network::<DanmNet>,
            Index::on_network::<DanmNet>,
        ),
        follow_kind(
            Api::<TenantNetwork>::all(client.clone()),
            "TenantNetwork",
            &networks_synced,
            &index,
            &changed,
            index::network::<TenantNetwork>,
            Index::on_network::<TenantNetwork>,
        ),
        follow_kind(
            Api::<ClusterNetwork>::all(client.clone()),
            "ClusterNetwork",
            &networks_synced,
            &index,
            &changed,
            index::network::<ClusterNetwork>,
            Index::on_network::<ClusterNetwork>,
        ),
    ];
    let gate_failed = async {
        match gate {
            Some(ref mut task) => match task.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => std::future::pending().await,
                Err(e) => ServeError::Socket {
                    path: config.gate_socket.clone().unwrap_or_default(),
                    source: std::io::Error::other(e),
                },
            },
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        _ = reconcile(&config, &index, &changed, &synced, &rounds, &metrics, (&client, &reporter)) => Ok(()),
        _ = shutdown => Ok(()),
        e = gate_failed => Err(e),
    };
    for task in tasks {
        task.abort();
    }
    stop_gate.notify_one();
    if let Some(task) = gate {
        let _ = task.await;
    }
    outcome
}

/// Follows one kind into the index; a change the decisions read wakes the rounds.
fn follow_kind<K, Q, V>(
    api: Api<K>,
    kind: &'static str,
    synced: &Arc<Synced>,
    index: &Arc<Mutex<Index>>,
    changed: &Arc<Notify>,
    convert: fn(K) -> (Q, V),
    on_change: fn(&mut Index, Change<(Q, V)>) -> bool,
) -> tokio::task::AbortHandle
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    Q: Send + 'static,
    V: Send + 'static,
{
    let (index, changed) = (Arc::clone(index), Arc::clone(changed));
    follow_map(api, kind, Arc::clone(synced), convert, move |change| {
        let relevant = on_change(&mut index.lock().expect("the index lock"), change);
        if relevant {
            changed.notify_one();
        }
    })
}

/// Rounds, forever: each after a change (and a settle time), once every kind is listed.
async fn reconcile(
    config: &Config,
    index: &Mutex<Index>,
    changed: &Notify,
    synced: &Synced,
    rounds: &Rounds,
    metrics: &Metrics,
    (client, reporter): (&kube::Client, &Reporter),
) {
    synced.listed().await;
    let mut sandboxes = Sandboxes::default();
    let mut first = true;
    // The failures already published as Events, so that one that stays is published once.
    let mut reported = crate::events::Reported::default();
    loop {
        let (round, work, sandbox_count) = {
            let mut index = index.lock().expect("the index lock");
            let round = rounds.begin();
            let mut pods = index.take_changed();
            // A failed apply is retried every round until it succeeds.
            pods.extend(sandboxes.failed.keys().map(|(pod, _)| pod.clone()));
            let work: Vec<(PodKey, BTreeSet<String>, PodRules)> = pods
                .into_iter()
                .map(|pod| {
                    let (netns, rules) = (index.sandboxes(&pod), index.rules(&pod));
                    (pod, netns, rules)
                })
                .collect();
            (round, work, index.sandbox_count())
        };
        let mut states: Vec<(SandboxKey, Option<SandboxState>)> = Vec::new();
        let mut jobs = Vec::new();
        metrics.evaluated(work.len());
        for (pod, netns, rules) in work {
            for gone in sandboxes.gone(&pod, &netns) {
                states.push((gone, None));
            }
            for netns in netns {
                let key = (pod.clone(), netns);
                match sandboxes.plan(&key, &rules, first) {
                    Plan::Unchanged => {}
                    Plan::Nothing => states.push((key, Some(Ok(false)))),
                    plan @ (Plan::Create | Plan::Replace | Plan::Clear) => {
                        match danm_core::names::netns_in(&config.netns_root, &key.1) {
                            Ok(path) => jobs.push((key, rules.clone(), path, plan)),
                            Err(e) => {
                                metrics.applied("refused-netns", 0.0);
                                tracing::warn!(namespace = %pod.0, pod = %pod.1, netns = %key.1, root = %config.netns_root.display(), error = %e, "the recorded network namespace is not one of the root's; not entered");
                                let why = format!(
                                    "network namespace {:?} is not an entry of {}: not entered",
                                    key.1,
                                    config.netns_root.display()
                                );
                                sandboxes.failed(&key, &why);
                                states.push((key, Some(Err(why))));
                            }
                        }
                    }
                }
            }
        }
        // The applies are independent (one namespace each): up to `parallel` at once.
        let mut outcomes = futures::stream::iter(jobs)
            .map(|(key, rules, path, plan)| {
                let replace = crate::ruleset::replace(&rules, &config.node_addresses);
                let create = matches!(plan, Plan::Create)
                    .then(|| crate::ruleset::create(&rules, &config.node_addresses));
                let nft = config.nft.clone();
                async move {
                    let started = std::time::Instant::now();
                    let outcome = tokio::task::spawn_blocking(move || match (plan, create) {
                        (Plan::Clear, _) => crate::apply::clear(&path, nft.as_deref()),
                        (_, Some(create)) => {
                            crate::apply::apply_first(&path, &create, &replace, nft.as_deref())
                        }
                        _ => crate::apply::apply(&path, &replace, nft.as_deref()),
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|applied| applied.map_err(|e| e.to_string()));
                    (key, rules, outcome, started.elapsed().as_secs_f64())
                }
            })
            .buffer_unordered(config.parallel.max(1));
        while let Some((key, rules, outcome, seconds)) = outcomes.next().await {
            let (namespace, pod) = (&key.0.0, &key.0.1);
            match outcome {
                Ok(()) => {
                    metrics.applied("ok", seconds);
                    tracing::info!(%namespace, %pod, netns = %key.1, interfaces_in = rules.ingress.len(), interfaces_out = rules.egress.len(), "applied");
                    states.push((key.clone(), Some(Ok(!rules.is_empty()))));
                    sandboxes.applied(key, rules);
                }
                Err(why) => {
                    metrics.applied("failed", seconds);
                    tracing::warn!(%namespace, %pod, netns = %key.1, error = %why, "apply failed; the pod keeps its previous rules, retried next round");
                    sandboxes.failed(&key, &why);
                    states.push((key, Some(Err(why))));
                }
            }
        }
        drop(outcomes);
        rounds.record(states);
        rounds.finish(round);
        first = false;
        let failing = sandboxes.failed.len();
        metrics.round(sandbox_count, sandboxes.isolated, sandboxes.rules, failing);
        let notes =
            crate::events::warnings(&sandboxes.failed, &index.lock().expect("the index lock"));
        crate::events::publish(client, reporter, notes, &mut reported);
        // A failed apply is retried after the settle time even with no change.
        if failing > 0 {
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(config.settle * 10) => {}
            }
        } else {
            changed.notified().await;
        }
        tokio::time::sleep(config.settle).await;
    }
}

/// What a round does for one sandbox.
enum Plan {
    /// Its table is already what the policies decide.
    Unchanged,
    /// No table, and none to remove: nothing to run.
    Nothing,
    /// A first table in a sandbox known to hold none of ours (a new pod's, or one cleared):
    /// created, with no delete in the transaction ([`crate::ruleset::create`]).
    Create,
    /// Replace whatever table of ours the sandbox holds.
    Replace,
    /// The first round, no policy selecting the pod: remove a table an earlier run left,
    /// if there is one (listed first: a delete costs the kernel's grace period).
    Clear,
}

/// What this run of the policer did to this node's sandboxes, kept across rounds.
#[derive(Default)]
struct Sandboxes {
    /// The rules each sandbox's table holds (none: no table of ours), as far as this run
    /// knows: a failed apply leaves them (and its sandbox in `failed`).
    applied: BTreeMap<SandboxKey, PodRules>,
    /// The sandboxes that may hold a table of ours: every one at the first round (an earlier
    /// run may have left one), then those given a table, or whose apply failed.
    may_hold: BTreeSet<SandboxKey>,
    /// The sandboxes whose last apply failed, and why.
    failed: BTreeMap<SandboxKey, String>,
    /// How many sandboxes have a table, and how many rules those hold.
    isolated: usize,
    rules: usize,
}

impl Sandboxes {
    /// Forgets the sandboxes of `pod` that are not among `netns` any more; returns them.
    fn gone(&mut self, pod: &PodKey, netns: &BTreeSet<String>) -> Vec<SandboxKey> {
        let from = (pod.clone(), String::new());
        let gone: Vec<SandboxKey> = self
            .may_hold
            .range(from..)
            .take_while(|key| key.0 == *pod)
            .chain(
                self.applied
                    .range((pod.clone(), String::new())..)
                    .map(|(key, _)| key)
                    .take_while(|key| key.0 == *pod),
            )
            .filter(|key| !netns.contains(&key.1))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for key in &gone {
            self.set(key, None);
            self.may_hold.remove(key);
            self.failed.remove(key);
        }
        gone
    }

    /// What to do for sandbox `key`, whose rules are now `rules`.
    fn plan(&mut self, key: &SandboxKey, rules: &PodRules, first: bool) -> Plan {
        if !first && !self.failed.contains_key(key) && self.applied.get(key) == Some(rules) {
            return Plan::Unchanged;
        }
        if first {
            self.may_hold.insert(key.clone());
            return if rules.is_empty() {
                Plan::Clear
            } else {
                Plan::Replace
            };
        }
        if self.may_hold.contains(key) {
            return Plan::Replace;
        }
        // No table of ours there: nothing to run when none is wanted, else a first one.
        if rules.is_empty() {
            self.set(key, Some(rules.clone()));
            return Plan::Nothing;
        }
        self.may_hold.insert(key.clone());
        Plan::Create
    }

    fn applied(&mut self, key: SandboxKey, rules: PodRules) {
        self.failed.remove(&key);
        if rules.is_empty() {
            self.may_hold.remove(&key);
        }
        self.set(&key, Some(rules));
    }

    /// The apply failed: the sandbox keeps the table it had (the kernel applied none of
    /// the transaction), still counted; the next round replaces it.
    fn failed(&mut self, key: &SandboxKey, why: &str) {
        self.failed.insert(key.clone(), why.to_owned());
    }

    fn set(&mut self, key: &SandboxKey, rules: Option<PodRules>) {
        if let Some(old) = self.applied.remove(key)
            && !old.is_empty()
        {
            self.isolated -= 1;
            self.rules -= crate::ruleset::rule_count(&old);
        }
        if let Some(rules) = rules {
            if !rules.is_empty() {
                self.isolated += 1;
                self.rules += crate::ruleset::rule_count(&rules);
            }
            self.applied.insert(key.clone(), rules);
        }
    }
}
