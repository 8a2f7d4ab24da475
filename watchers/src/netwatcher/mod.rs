//! netwatcher: keeps a node's VLAN and VxLAN host links as the networks ask.
//!
//! The unit of reconciliation is the node's whole set of links, not one network: a link may
//! be shared by several networks and must go only with the last of them, and a deleted
//! network must take its link along. So three kube-runtime reflectors (DanmNet,
//! TenantNetwork, ClusterNetwork) keep the networks in memory, and any change of any of
//! them (a delete included), the periodic resync and the start all trigger one [`sync`]: the
//! wanted links ([`danm_core::hostlinks::wanted_links`]) against the node's links read over
//! netlink, and the plan's actions carried out. A failed sync is retried with a backoff
//! (the error policy); a link deleted by hand comes back at the next resync.
//!
//! What cannot be done (a missing `host_device`, a device without an address for a VxLAN, a
//! name too long, two networks asking one name with different parameters, a foreign link
//! in the way) is reported on each network concerned as a Kubernetes Event, logged and
//! counted, and never stops the other links. After each sync the node's NodeLinkReport
//! (which networks' links are in place here, which fail and why) is written when it
//! changed ([`report`]); ipamd sums the reports into each network's `status.links`. A contested name stays with the network whose
//! link is on the node (see [`danm_core::hostlinks`]): a newcomer never takes it over.
//!
//! With `--attachment-namespaces`, the NetworkAttachmentDefinitions of those namespaces
//! claim links too, and their `master` is rewritten to the link ([`attachments`]); off by
//! default, since their VLAN and VxLAN ids are checked against no TenantConfig.

pub mod attachments;
pub mod metrics;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use danm_core::hostlinks::report::bounded;
use danm_core::hostlinks::report::{action_link, report};
use danm_core::hostlinks::{
    Action, Claim, LinkOwner, LinkProblem, network_links, plan, wanted_links,
};
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{ClusterNetwork, DanmNet, NetworkSpec, NodeLinkReportSpec, TenantNetwork};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

pub use attachments::AttachmentNamespaces;
pub use danm_netlink::{LinkError, NodeLinks};
pub use metrics::Metrics;
use report::Reporter;

/// The node name netwatcher runs under when none is given: no link report is written
/// under it (every such node would overwrite the others').
pub const UNKNOWN_NODE: &str = "unknown-node";

/// How netwatcher runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Time between full syncs when nothing changes.
    pub resync: Duration,
    /// This node's name (the Events' reporting instance).
    pub node: String,
    /// The namespaces whose NetworkAttachmentDefinitions claim links.
    pub attachments: AttachmentNamespaces,
}

/// A network kind netwatcher follows: its objects give a key and a spec.
trait NetworkObject:
    Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static
{
    const KIND: NetworkKind;
    fn network(&self) -> &NetworkSpec;
}

impl NetworkObject for DanmNet {
    const KIND: NetworkKind = NetworkKind::DanmNet;
    fn network(&self) -> &NetworkSpec {
        &self.spec.network
    }
}

impl NetworkObject for TenantNetwork {
    const KIND: NetworkKind = NetworkKind::TenantNetwork;
    fn network(&self) -> &NetworkSpec {
        &self.spec.network
    }
}

impl NetworkObject for ClusterNetwork {
    const KIND: NetworkKind = NetworkKind::ClusterNetwork;
    fn network(&self) -> &NetworkSpec {
        &self.spec.network
    }
}

/// One owner of links as a sync sees it: a network, or a NetworkAttachmentDefinition.
struct Claimant {
    claim: Claim,
    /// The object the Events go to.
    reference: ObjectReference,
    /// A NetworkAttachmentDefinition whose `master` must be rewritten to its link.
    rewrite: Option<attachments::Rewrite>,
}

/// `metadata.creationTimestamp` (RFC 3339): the older owner keeps a contested link.
fn created<K: Resource>(o: &K) -> String {
    o.meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
}

fn snapshot<K: NetworkObject>(store: &Store<K>) -> Vec<Claimant> {
    store
        .state()
        .iter()
        .map(|o| {
            let key = NetworkKey::new(K::KIND, &o.namespace().unwrap_or_default(), &o.name_any());
            Claimant {
                claim: Claim {
                    owner: LinkOwner::Network(key),
                    links: network_links(o.network()),
                    created: created(o.as_ref()),
                },
                reference: o.object_ref(&()),
                rewrite: None,
            }
        })
        .collect()
}

/// A reflector of one kind: its store, and a stream that yields on every change of a spec.
/// A write that leaves `metadata.generation` as it was (ipamd's status writer, a label)
/// does not change what links a network wants: it triggers no sync.
fn follow<K>(api: Api<K>, kind: &'static str) -> (Store<K>, impl Stream<Item = ()> + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let generations = Arc::new(std::sync::Mutex::new(HashMap::<String, i64>::new()));
    let changes = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .filter_map(move |event| {
            let generations = Arc::clone(&generations);
            async move {
                match event {
                    Ok(watcher::Event::Apply(o)) => {
                        let uid = o.uid().unwrap_or_default();
                        let before = match o.meta().generation {
                            Some(g) => generations.lock().expect("lock").insert(uid, g) == Some(g),
                            None => false,
                        };
                        (!before).then_some(())
                    }
                    Ok(watcher::Event::InitApply(o)) => {
                        if let Some(g) = o.meta().generation {
                            generations
                                .lock()
                                .expect("lock")
                                .insert(o.uid().unwrap_or_default(), g);
                        }
                        Some(())
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        generations
                            .lock()
                            .expect("lock")
                            .remove(&o.uid().unwrap_or_default());
                        Some(())
                    }
                    Ok(_) => Some(()),
                    Err(e) => {
                        tracing::warn!(kind, error = %e, "watch failed; retrying");
                        None
                    }
                }
            }
        });
    (reader, changes)
}

/// Keeps the node's links until `shutdown` completes.
pub async fn run(
    client: kube::Client,
    links: NodeLinks,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let (danmnets, a) = follow(Api::<DanmNet>::all(client.clone()), "DanmNet");
    let (tenantnets, b) = follow(Api::<TenantNetwork>::all(client.clone()), "TenantNetwork");
    let (clusternets, c) = follow(Api::<ClusterNetwork>::all(client.clone()), "ClusterNetwork");
    let (attachments, d) = attachments::follow_attachments(&client, &config.attachments);
    let mut changes = futures::stream::select_all([a.boxed(), b.boxed(), c.boxed(), d.boxed()]);
    let mut reporter = if config.node == UNKNOWN_NODE {
        tracing::warn!("no --node-name (NODE_NAME): this node's link report is not written");
        None
    } else {
        Some(Reporter::new(client.clone(), &config.node))
    };
    let recorder = Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter {
            controller: "danm-netwatcher".into(),
            instance: Some(config.node.clone()),
        },
    );
    tokio::pin!(shutdown);
    // Wait until each store has its first list.
    let ready = async {
        let _ = danmnets.wait_until_ready().await;
        let _ = tenantnets.wait_until_ready().await;
        let _ = clusternets.wait_until_ready().await;
    };
    let drain = async {
        loop {
            changes.next().await;
        }
    };
    tokio::select! {
        _ = ready => {}
        _ = drain => {}
        _ = &mut shutdown => return,
    }
    let mut backoff = Duration::from_secs(1);
    let mut reported = Reported::default();
    loop {
        let mut networks = snapshot(&danmnets);
        networks.extend(snapshot(&tenantnets));
        networks.extend(snapshot(&clusternets));
        networks.extend(attachments.snapshot());
        // Until every followed namespace's attachments are listed (their CRD missing, a
        // RoleBinding missing), no link is removed: one of theirs would look unwanted.
        let complete = attachments.ready();
        let outcome = sync(
            &networks,
            &links,
            &recorder,
            &metrics,
            &mut reported,
            complete,
        )
        .await;
        let outcome = match outcome {
            Ok(Synced {
                report,
                failed,
                rewrites,
            }) => {
                if let Some(reporter) = reporter.as_mut() {
                    reporter.publish(report).await;
                }
                for rewrite in rewrites {
                    rewrite.apply(&client, &metrics).await;
                }
                failed.map_or(Ok(()), Err)
            }
            Err(e) => Err(e),
        };
        let wait = match outcome {
            Ok(()) => {
                metrics.synced();
                backoff = Duration::from_secs(1);
                config.resync
            }
            Err(e) => {
                // The error policy: retry the whole sync, with a growing pause.
                metrics.sync_failed(&e.to_string());
                tracing::warn!(error = %e, retry_in = ?backoff, "sync failed");
                let wait = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(60));
                wait
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            Some(()) = changes.next() => {
                // Let a burst of changes land before the next sync.
                tokio::time::sleep(Duration::from_millis(100)).await;
                while futures::FutureExt::now_or_never(changes.next()).flatten().is_some() {}
            }
            _ = &mut shutdown => return,
        }
    }
}

/// One sync: the wanted links against the node's, the plan carried out, problems reported.
/// An action that fails is reported and the others go on; the sync fails (and is retried)
/// when the node's links cannot be read or an action failed.
/// The problems already published as Events, so that a problem that stays is published
/// once, not at every sync of every node (kube-runtime's recorder would fold repeats into a
/// series, but each repeat is still a write).
#[derive(Debug, Default)]
struct Reported(std::collections::HashSet<(LinkOwner, String)>);

/// What a sync found: the node's report, the first action that failed (the sync is then
/// retried), and the NetworkAttachmentDefinitions whose `master` must name their link.
struct Synced {
    report: NodeLinkReportSpec,
    failed: Option<LinkError>,
    rewrites: Vec<attachments::Rewrite>,
}

async fn sync(
    networks: &[Claimant],
    links: &NodeLinks,
    recorder: &Recorder,
    metrics: &Metrics,
    reported: &mut Reported,
    complete: bool,
) -> Result<Synced, LinkError> {
    let (wanted, network_problems) = wanted_links(networks.iter().map(|n| n.claim.clone()));
    let observed = links.observe().await?;
    let (mut actions, link_problems) = plan(&wanted, &observed.devices, &observed.links);
    if !complete {
        actions.retain(|a| !matches!(a, Action::Delete { recreate: None, .. }));
    }
    let by_key: HashMap<&LinkOwner, &Claimant> =
        networks.iter().map(|n| (&n.claim.owner, n)).collect();
    let mut problems: Vec<(&Claimant, LinkProblem)> = network_problems
        .into_iter()
        .filter_map(|(key, p)| by_key.get(&key).map(|n| (*n, p)))
        .collect();
    for (keys, problem) in link_problems {
        for key in &keys {
            if let Some(n) = by_key.get(key) {
                problems.push((n, problem.clone()));
            }
        }
    }
    let current: std::collections::HashSet<(LinkOwner, String)> = problems
        .iter()
        .map(|(n, p)| (n.claim.owner.clone(), p.to_string()))
        .collect();
    for (network, problem) in &problems {
        metrics.problem(problem.reason());
        if reported
            .0
            .contains(&(network.claim.owner.clone(), problem.to_string()))
        {
            continue;
        }
        tracing::warn!(network = %network.claim.owner, reason = problem.reason(), "{problem}");
        let event = Event {
            type_: EventType::Warning,
            reason: problem.reason().into(),
            note: Some(bounded(problem.to_string())),
            action: "KeepHostLink".into(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &network.reference).await {
            tracing::warn!(network = %network.claim.owner, error = %e, "cannot publish an Event");
        }
    }
    // A problem that went away is published again if it comes back.
    reported.0 = current;
    let mut failed = None;
    let mut failed_links = BTreeMap::new();
    for action in &actions {
        match links.apply(action, &observed).await {
            Ok(()) => {
                metrics.applied(action);
                tracing::info!(?action, "host link changed");
            }
            Err(e) => {
                metrics.problem("NetlinkFailed");
                tracing::warn!(?action, error = %e, "host link change failed");
                if let Some(link) = action_link(action) {
                    failed_links.insert(link.to_owned(), e.to_string());
                }
                failed = Some(e);
            }
        }
    }
    metrics.managed(wanted.len());
    // A NetworkAttachmentDefinition's master is rewritten only where it has no problem, is
    // first by precedence for each of its links (not merely holding one the node had), and
    // none of its links failed (another node's netwatcher may write it first).
    let first_for_all = |owner: &LinkOwner| {
        wanted.values().all(|w| {
            !w.networks.contains(owner) && !w.rivals.iter().any(|r| r.networks.contains(owner))
                || (w.networks.contains(owner) && !failed_links.contains_key(&w.name))
        })
    };
    let rewrites = networks
        .iter()
        .filter(|n| !problems.iter().any(|(p, _)| p.claim.owner == n.claim.owner))
        .filter(|n| first_for_all(&n.claim.owner))
        .filter_map(|n| n.rewrite.clone())
        .collect();
    let report = report(
        &wanted,
        problems
            .iter()
            .map(|(n, p)| (&n.claim.owner, bounded(format!("{}: {p}", p.reason())))),
        &failed_links,
    );
    Ok(Synced {
        report,
        failed,
        rewrites,
    })
}
