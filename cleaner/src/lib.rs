//! The cleaner: frees what dead pods, nodes and networks left behind, so that no address is
//! leaked after any failure (DESIGN.md, invariant 3).
//!
//! Kubernetes tells a CNI plugin nothing when a node or a whole cluster dies with pods on it;
//! without a cleaner their addresses (static ones above all) stay taken forever. One pass:
//!
//! 1. [`survey`]: reads shards, DanmEps, pods, nodes and networks with paginated lists and
//!    judges each DanmEp and each allocated address with [`danm_core::leak`] (pod gone, pod
//!    replaced under the same name, pod finished, node gone, network gone, orphan older than
//!    the grace period). A pod on a NotReady node is not leaked; nothing is decided by a pod's
//!    name alone.
//! 2. [`free`]: re-reads and re-judges each finding right before freeing it, and frees through
//!    ipamd with the owner key (`Release`) or the owner fingerprint (`ReclaimOrphan`), so a
//!    cleaner can never free an address that has meanwhile gone to a new owner.
//! 3. [`report`]: one line per finding and one summary line (or JSON for scripts), and the
//!    [`metrics`] by reason.
//!
//! With `--calico`, a leaked DanmEp of a network delegated to Calico also has the addresses
//! Calico's IPAM gave its sandbox freed in Calico's datastore ([`calico`]), as danm-utils'
//! cleaner did.
//!
//! `cleaner --once` runs one pass (a CronJob); `cleaner --watch` runs one every interval
//! while it holds a Lease (a Deployment, replicated or not).

pub mod calico;
pub mod facts;
pub mod free;
pub mod metrics;
pub mod report;
pub mod survey;

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use danm_core::NetworkKey;
use danm_core::leak::{EndpointFacts, Reason};

pub use free::Freer;
pub use report::Report;
pub use survey::{Sightings, Survey, survey};

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanerError {
    /// A request to the Kubernetes API failed.
    #[error("{what}: {source}")]
    Api {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Calico's objects could not be released (the DanmEp is kept for the next pass).
    #[error("Calico: {0}")]
    Calico(String),
    /// A request to ipamd failed.
    #[error("{what}: ipamd answered {}: {}", source.code(), source.message())]
    Ipamd {
        /// The request.
        what: String,
        /// Why.
        #[source]
        source: tonic::Status,
    },
}

/// Something leaked, and why.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Why it is leaked.
    pub reason: Reason,
    /// What is leaked.
    pub subject: Subject,
}

/// What a finding is about.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A DanmEp and the addresses it names.
    Endpoint(Box<EndpointFacts>),
    /// An address set in a shard that no DanmEp names.
    Address {
        /// Its network.
        network: NetworkKey,
        /// The address.
        address: IpAddr,
        /// The owner fingerprint stored beside it.
        fingerprint: u64,
        /// The shard holding it.
        shard: String,
    },
    /// A shard of a network that no longer exists.
    Shard {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// Its UID (the delete is conditional on it).
        uid: String,
        /// The network it names.
        network: NetworkKey,
    },
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Endpoint(ep) => write!(
                f,
                "DanmEp {}/{} (pod {}, node {}, interface {})",
                ep.namespace,
                ep.name,
                or_dash(&ep.pod),
                or_dash(&ep.host),
                or_dash(&ep.ifname)
            ),
            Subject::Address {
                network,
                address,
                fingerprint,
                ..
            } => write!(
                f,
                "address {address} of {network} (owner {fingerprint:016x})"
            ),
            Subject::Shard {
                namespace, name, ..
            } => write!(f, "AllocationShard {namespace}/{name}"),
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// What became of a finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Freed: the addresses freed (none for a record or shard whose addresses were gone).
    Freed(Vec<String>),
    /// A dry run: it would have been freed (it is still leaked on re-check).
    WouldFree,
    /// Not leaked on re-check: kept, with why.
    Kept(String),
    /// Gone before the cleaner got to it (someone else freed it).
    Gone,
    /// Could not be freed, with why; the next pass tries again.
    Failed(String),
}

impl Outcome {
    /// The outcome as reports spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Freed(_) => "freed",
            Outcome::WouldFree => "would-free",
            Outcome::Kept(_) => "kept",
            Outcome::Gone => "gone",
            Outcome::Failed(_) => "failed",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Freed(a) if a.is_empty() => f.write_str("freed"),
            Outcome::Freed(a) => write!(f, "freed {}", a.join(", ")),
            Outcome::Kept(why) => write!(f, "kept: {why}"),
            Outcome::Failed(why) => write!(f, "failed: {why}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// A finding and its outcome.
#[derive(Clone, Debug)]
pub struct Settled {
    /// The finding (its reason as re-judged).
    pub finding: Finding,
    /// What became of it.
    pub outcome: Outcome,
}

/// How a pass runs.
#[derive(Clone, Debug)]
pub struct PassConfig {
    /// Age an address no DanmEp names must reach before it is freed.
    pub grace: Duration,
    /// Findings settled at a time.
    pub concurrency: usize,
    /// Objects per list request.
    pub page: u32,
}

/// One pass: survey, then settle every finding. `sightings` carries what earlier passes saw
/// (`--watch`); give a fresh one for a single pass.
pub async fn pass(
    freer: &Freer,
    config: &PassConfig,
    sightings: &mut Sightings,
    metrics: &metrics::Metrics,
) -> Result<Report, CleanerError> {
    let started = std::time::Instant::now();
    let surveyed = survey(&freer.client, config.grace, config.page, sightings).await?;
    for f in &surveyed.findings {
        metrics.found(f.reason);
    }
    let Survey {
        findings,
        scanned,
        young_orphans,
        corrupt_shards,
    } = surveyed;
    let settled = freer.settle(findings, config.concurrency).await;
    for s in &settled {
        metrics.settled(s.finding.reason, &s.outcome);
    }
    let report = Report {
        dry_run: freer.dry_run,
        grace: config.grace,
        scanned,
        settled,
        young_orphans,
        corrupt_shards,
        seconds: started.elapsed().as_secs_f64(),
    };
    metrics.pass_done(&report);
    Ok(report)
}
