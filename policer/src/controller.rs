//! The controller: follows namespaces, pods, DanmEps and DanmNetworkPolicies, and keeps the
//! table of every pod of this node as the policies decide. After any change (coalesced), a
//! round recomputes each local pod's decisions and applies those that differ from what it
//! last applied; a failed apply keeps the pod's previous table and is retried every round
//! until it succeeds. The first round, once every kind is listed, applies every local pod
//! (removing tables no policy asks for any more), so a restart converges.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use std::time::Duration;

use danm_core::netpol::PodRules;
use danm_crds::{DanmEp, DanmNetworkPolicy};
use danm_runtime::index::{Change, Synced, follow_map};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::Notify;

use crate::gate::{Gate, RoundReport, Rounds, SandboxKey, ServeError};
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
    let index = Arc::new(Mutex::new(Index::default()));
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
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "danm-policer".into(),
            instance: Some(config.node.clone()),
        },
    );
    let tasks = [
        follow_kind(
            Api::<Namespace>::all(client.clone()),
            "Namespace",
            &synced,
            &index,
            &changed,
            index::namespace,
            Index::namespaces_mut,
        ),
        follow_kind(
            Api::<Pod>::all(client.clone()),
            "Pod",
            &synced,
            &index,
            &changed,
            index::pod,
            Index::pods_mut,
        ),
        follow_kind(
            Api::<DanmEp>::all(client.clone()),
            "DanmEp",
            &synced,
            &index,
            &changed,
            index::endpoint,
            Index::endpoints_mut,
        ),
        follow_kind(
            Api::<DanmNetworkPolicy>::all(client),
            "DanmNetworkPolicy",
            &synced,
            &index,
            &changed,
            index::policy,
            Index::policies_mut,
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
        _ = reconcile(&config, &index, &changed, &synced, &rounds, &metrics, &recorder) => Ok(()),
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

/// Follows one kind into one map of the index.
fn follow_kind<K, Q, V>(
    api: Api<K>,
    kind: &'static str,
    synced: &Arc<Synced>,
    index: &Arc<Mutex<Index>>,
    changed: &Arc<Notify>,
    convert: fn(K) -> (Q, V),
    map: fn(&mut Index) -> &mut std::collections::HashMap<Q, V>,
) -> tokio::task::AbortHandle
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    Q: std::hash::Hash + Eq + Send + 'static,
    V: Send + 'static,
{
    let (index, changed) = (Arc::clone(index), Arc::clone(changed));
    follow_map(api, kind, Arc::clone(synced), convert, move |change| {
        {
            let mut index = index.lock().expect("the index lock");
            let map = map(&mut index);
            match change {
                Change::Relisted(all) => {
                    map.clear();
                    map.extend(all);
                }
                Change::Applied((key, value)) => {
                    map.insert(key, value);
                }
                Change::Deleted((key, _)) => {
                    map.remove(&key);
                }
            }
        }
        changed.notify_one();
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
    recorder: &Recorder,
) {
    synced.listed().await;
    let mut applied: BTreeMap<(PodKey, String), PodRules> = BTreeMap::new();
    // The sandboxes this run has run nft in (whether or not it took).
    let mut written: std::collections::BTreeSet<(PodKey, String)> = Default::default();
    let mut first = true;
    // The failures already published as Events, so that one that stays is published once.
    let mut reported: BTreeMap<Regarding, String> = BTreeMap::new();
    loop {
        let (round, snapshot) = {
            let index = index.lock().expect("the index lock");
            (rounds.begin(), index.snapshot(&config.node))
        };
        let mut failed: BTreeMap<SandboxKey, String> = BTreeMap::new();
        let mut failing = 0;
        let mut isolated = 0;
        let mut rule_count = 0;
        let mut failures: BTreeMap<PodKey, String> = BTreeMap::new();
        let mut jobs = Vec::new();
        for (pod, netns) in &snapshot.local {
            let rules = snapshot.rules(pod);
            let key = (pod.clone(), netns.clone());
            if !rules.is_empty() {
                isolated += 1;
            }
            rule_count += crate::ruleset::rule_count(&rules);
            if !first && applied.get(&key) == Some(&rules) {
                continue;
            }
            // Nothing to isolate in a sandbox this run never tried to give a table or to
            // clear (the first round tries every sandbox, removing what an earlier run left):
            // there is none, nothing to run.
            if !first && rules.is_empty() && !written.contains(&key) {
                applied.insert(key, rules);
                continue;
            }
            written.insert(key.clone());
            let path = match danm_core::names::netns_in(&config.netns_root, netns) {
                Ok(path) => path,
                Err(e) => {
                    failing += 1;
                    metrics.applied("refused-netns", 0.0);
                    tracing::warn!(namespace = %pod.0, pod = %pod.1, netns = %netns, root = %config.netns_root.display(), error = %e, "the recorded network namespace is not one of the root's; not entered");
                    let why = format!(
                        "network namespace {netns:?} is not an entry of {}: not entered",
                        config.netns_root.display()
                    );
                    failed.insert(key, why.clone());
                    failures.insert(pod.clone(), why);
                    continue;
                }
            };
            jobs.push((pod.clone(), key, rules, path));
        }
        // The applies are independent (one namespace each): up to `parallel` at once.
        let mut outcomes = futures::stream::iter(jobs)
            .map(|(pod, key, rules, path)| {
                let batch = crate::ruleset::replace(&rules, &config.node_addresses);
                let nft = config.nft.clone();
                async move {
                    let started = std::time::Instant::now();
                    let outcome = tokio::task::spawn_blocking(move || {
                        crate::apply::apply(&path, &batch, nft.as_deref())
                    })
                    .await;
                    (pod, key, rules, outcome, started.elapsed().as_secs_f64())
                }
            })
            .buffer_unordered(config.parallel.max(1));
        while let Some((pod, key, rules, outcome, seconds)) = outcomes.next().await {
            match outcome {
                Ok(Ok(())) => {
                    metrics.applied("ok", seconds);
                    tracing::info!(namespace = %pod.0, pod = %pod.1, interfaces_in = rules.ingress.len(), interfaces_out = rules.egress.len(), "applied");
                    applied.insert(key, rules);
                }
                Ok(Err(e)) => {
                    failing += 1;
                    metrics.applied("failed", seconds);
                    failures.insert(pod.clone(), e.to_string());
                    failed.insert(key.clone(), e.to_string());
                    applied.remove(&key);
                    tracing::warn!(namespace = %pod.0, pod = %pod.1, error = %e, "apply failed; the pod keeps its previous rules, retried next round");
                }
                Err(e) => {
                    failing += 1;
                    metrics.applied("failed", seconds);
                    failures.insert(pod.clone(), e.to_string());
                    failed.insert(key.clone(), e.to_string());
                    applied.remove(&key);
                    tracing::warn!(namespace = %pod.0, pod = %pod.1, error = %e, "apply task failed");
                }
            }
        }
        drop(outcomes);
        applied.retain(|key, _| snapshot.local.contains(key));
        written.retain(|key| snapshot.local.contains(key));
        rounds.finish(RoundReport {
            id: round,
            applied: applied
                .iter()
                .map(|(key, rules)| (key.clone(), !rules.is_empty()))
                .collect(),
            failed,
        });
        first = false;
        metrics.round(snapshot.local.len(), isolated, rule_count, failing);
        publish(recorder, warnings(&failures, &snapshot), &mut reported);
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

/// What an Event is about: a pod (`v1`) or a DanmNetworkPolicy (`danm.io/v1`), by kind,
/// namespace and name.
type Regarding = (&'static str, String, String);

/// The Warning Events of one round: one on each pod whose apply failed, and one on each
/// policy that selects such pods, naming up to five of them.
fn warnings(
    failures: &BTreeMap<PodKey, String>,
    snapshot: &crate::index::Snapshot,
) -> BTreeMap<Regarding, String> {
    let mut notes = BTreeMap::new();
    let mut by_policy: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for (pod, why) in failures {
        notes.insert(
            ("Pod", pod.0.clone(), pod.1.clone()),
            format!("the pod keeps the rules it had (none, if this was its first table): {why}"),
        );
        for policy in snapshot.selecting(pod) {
            by_policy
                .entry((pod.0.clone(), policy))
                .or_default()
                .push(format!("{} ({why})", pod.1));
        }
    }
    for ((namespace, policy), pods) in by_policy {
        let more = pods.len().saturating_sub(5);
        let mut note = format!(
            "not enforced on {} pod(s) of this node, which keep the rules they had: {}",
            pods.len(),
            pods[..pods.len().min(5)].join("; ")
        );
        if more > 0 {
            note.push_str(&format!("; and {more} more (their Events)"));
        }
        notes.insert(("DanmNetworkPolicy", namespace, policy), note);
    }
    notes
}

/// Publishes each Warning Event once (again when its note changes, or when it comes back
/// after the failure went away), from a task of its own: a slow API server never holds a
/// round (nor the gate, which waits for rounds) back.
fn publish(
    recorder: &Recorder,
    notes: BTreeMap<Regarding, String>,
    reported: &mut BTreeMap<Regarding, String>,
) {
    let new: Vec<(Regarding, String)> = notes
        .iter()
        .filter(|(regarding, note)| reported.get(*regarding) != Some(*note))
        .map(|(regarding, note)| (regarding.clone(), note.clone()))
        .collect();
    *reported = notes;
    if new.is_empty() {
        return;
    }
    let recorder = recorder.clone();
    tokio::spawn(async move { send(&recorder, new).await });
}

async fn send(recorder: &Recorder, events: Vec<(Regarding, String)>) {
    for ((kind, namespace, name), note) in &events {
        let api_version = if *kind == "Pod" { "v1" } else { "danm.io/v1" };
        let reference = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some((*kind).into()),
            namespace: Some(namespace.clone()),
            name: Some(name.clone()),
            ..Default::default()
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "PolicyNotApplied".into(),
            note: Some(truncated(note)),
            action: "ApplyNetworkPolicy".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            tracing::warn!(kind, namespace, name, error = %e, "cannot publish an Event");
        }
    }
}

/// An Event's note is at most 1 kB.
fn truncated(note: &str) -> String {
    match note.char_indices().nth(1000) {
        Some((at, _)) => format!("{}…", &note[..at]),
        None => note.to_owned(),
    }
}
