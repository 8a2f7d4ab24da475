//! The policer's Warning Events: on a pod whose table could not be applied, on the
//! policies that select it, and on a policy that names a network that does not exist. Each
//! is published once, again when its note changes or it comes back, from a task of its own.
//!
//! Each publication is an Event object of its own. kube-runtime's [`Recorder`] folds what
//! it publishes for the same object, reason and action within six minutes into one series
//! that keeps its first note: a cause that changed would show the old one. Since nothing is
//! published twice with the same note here, there is no repeat to fold: a fresh recorder
//! publishes each.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};

use crate::gate::SandboxKey;
use crate::index::{Index, PodKey};

/// An Event: its reason, and what it is about: a pod (`v1`) or a DanmNetworkPolicy
/// (`danm.io/v1`), by kind, namespace and name.
pub type Regarding = (&'static str, &'static str, String, String);

/// The Events already published, with their notes, so that one whose cause stays is
/// published once.
pub type Reported = BTreeMap<Regarding, String>;

const NOT_APPLIED: &str = "PolicyNotApplied";
const NETWORK_NOT_FOUND: &str = "NetworkNotFound";

/// The Warning Events of one round: `PolicyNotApplied` on each pod whose apply failed and on
/// each policy that selects such pods (naming up to five of them); `NetworkNotFound` on each
/// policy that names a network that does not exist and selects a pod of this node.
pub fn warnings(failures: &BTreeMap<SandboxKey, String>, index: &Index) -> Reported {
    let mut notes = BTreeMap::new();
    let mut by_policy: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let by_pod: BTreeMap<&PodKey, &String> =
        failures.iter().map(|((pod, _), why)| (pod, why)).collect();
    for (pod, why) in by_pod {
        notes.insert(
            (NOT_APPLIED, "Pod", pod.0.clone(), pod.1.clone()),
            format!("the pod keeps the rules it had (none, if this was its first table): {why}"),
        );
        for policy in index.selecting(pod) {
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
        notes.insert((NOT_APPLIED, "DanmNetworkPolicy", namespace, policy), note);
    }
    // No count of the pods in the note: a note that changed with every pod would publish
    // again and again.
    for ((namespace, policy), missing) in index.missing_networks() {
        let named: Vec<String> = missing
            .iter()
            .map(|(field, network)| format!("{field}: {network}"))
            .collect();
        let note = format!(
            "names networks that do not exist (yet), which select no interface until they \
             do, and selects pods of this node: {}",
            named.join("; ")
        );
        notes.insert(
            (NETWORK_NOT_FOUND, "DanmNetworkPolicy", namespace, policy),
            note,
        );
    }
    notes
}

/// Publishes each Warning Event once (again when its note changes, or when it comes back
/// after the failure went away), from a task of its own: a slow API server never holds a
/// round (nor the gate, which waits for rounds) back.
pub fn publish(
    client: &kube::Client,
    reporter: &Reporter,
    notes: Reported,
    reported: &mut Reported,
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
    let (client, reporter) = (client.clone(), reporter.clone());
    tokio::spawn(async move { send(client, reporter, new).await });
}

async fn send(client: kube::Client, reporter: Reporter, events: Vec<(Regarding, String)>) {
    for ((reason, kind, namespace, name), note) in &events {
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
            reason: (*reason).into(),
            note: Some(truncated(note)),
            action: "ApplyNetworkPolicy".into(),
            secondary: None,
        };
        let recorder = Recorder::new(client.clone(), reporter.clone());
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
