//! What a pass tells its user: one line per finding and one summary line, or the same as
//! JSON for scripts (`-o json`, the `calicoctl ipam check` of this suite).

use std::collections::BTreeMap;
use std::time::Duration;

use danm_core::leak::Reason;
use serde_json::{Value, json};

use crate::survey::Scanned;
use crate::{Outcome, Settled, Subject};

/// The result of one pass.
#[derive(Clone, Debug)]
pub struct Report {
    /// Nothing was freed.
    pub dry_run: bool,
    /// The grace period for addresses no DanmEp names.
    pub grace: Duration,
    /// Objects read.
    pub scanned: Scanned,
    /// Every finding with its outcome.
    pub settled: Vec<Settled>,
    /// Addresses no DanmEp names, younger than the grace period (left for a later pass).
    pub young_orphans: usize,
    /// Shards refused for a bad CRC32 (never touched: see the log).
    pub corrupt_shards: Vec<String>,
    /// Duration of the pass.
    pub seconds: f64,
}

impl Report {
    /// Findings that could not be freed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// Findings freed (or, in a dry run, that would have been).
    pub fn freed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Freed(_) | Outcome::WouldFree))
    }

    /// Addresses freed.
    pub fn addresses_freed(&self) -> usize {
        self.settled
            .iter()
            .map(|s| match &s.outcome {
                Outcome::Freed(a) => a.len(),
                _ => 0,
            })
            .sum()
    }

    fn count(&self, pick: impl Fn(&Outcome) -> bool) -> usize {
        self.settled.iter().filter(|s| pick(&s.outcome)).count()
    }

    /// Findings by reason.
    pub fn found_by_reason(&self) -> BTreeMap<Reason, usize> {
        let mut by = BTreeMap::new();
        for s in &self.settled {
            *by.entry(s.finding.reason).or_default() += 1;
        }
        by
    }

    /// The one line every pass ends with.
    pub fn summary(&self) -> String {
        let by: Vec<String> = self
            .found_by_reason()
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        let s = &self.scanned;
        format!(
            "cleaner{}: scanned {} DanmEps, {} pods, {} nodes, {} networks, {} shards ({} addresses); found {}{}; {} {} ({} addresses); kept on re-check {}; gone meanwhile {}; failed {}; orphans within the {}s grace {}; corrupt shards {}; {:.1}s",
            if self.dry_run { " (dry run)" } else { "" },
            s.danmeps,
            s.pods,
            s.nodes,
            s.networks,
            s.shards,
            s.addresses,
            self.settled.len(),
            if by.is_empty() {
                String::new()
            } else {
                format!(" ({})", by.join(", "))
            },
            if self.dry_run { "would free" } else { "freed" },
            self.freed(),
            self.addresses_freed(),
            self.count(|o| matches!(o, Outcome::Kept(_))),
            self.count(|o| matches!(o, Outcome::Gone)),
            self.failed(),
            self.grace.as_secs(),
            self.young_orphans,
            self.corrupt_shards.len(),
            self.seconds,
        )
    }

    /// One line per finding, then the summary line.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for s in &self.settled {
            let addresses = match &s.finding.subject {
                Subject::Endpoint(ep) => [ep.ip.as_str(), ep.ip6.as_str()]
                    .iter()
                    .filter(|a| !a.is_empty() && **a != "none")
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => String::new(),
            };
            out.push_str(&format!(
                "{:<10} {:<13} {}{}{}\n",
                s.outcome.as_str(),
                s.finding.reason.as_str(),
                s.finding.subject,
                if addresses.is_empty() {
                    String::new()
                } else {
                    format!(" [{addresses}]")
                },
                match &s.outcome {
                    Outcome::Kept(why) | Outcome::Failed(why) => format!(": {why}"),
                    _ => String::new(),
                }
            ));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> Value {
        let findings: Vec<Value> = self.settled.iter().map(settled_json).collect();
        let found: BTreeMap<&str, usize> = self
            .found_by_reason()
            .into_iter()
            .map(|(r, n)| (r.as_str(), n))
            .collect();
        json!({
            "dryRun": self.dry_run,
            "graceSeconds": self.grace.as_secs(),
            "scanned": self.scanned,
            "findings": findings,
            "summary": {
                "found": found,
                "freed": self.freed(),
                "addressesFreed": self.addresses_freed(),
                "kept": self.count(|o| matches!(o, Outcome::Kept(_))),
                "gone": self.count(|o| matches!(o, Outcome::Gone)),
                "failed": self.failed(),
                "youngOrphans": self.young_orphans,
                "corruptShards": self.corrupt_shards,
                "seconds": self.seconds,
            },
        })
    }
}

fn settled_json(s: &Settled) -> Value {
    let mut v = match &s.finding.subject {
        Subject::Endpoint(ep) => {
            let addresses: Vec<&String> = [&ep.ip, &ep.ip6]
                .into_iter()
                .filter(|a| !a.is_empty())
                .collect();
            json!({
                "kind": "DanmEp",
                "namespace": ep.namespace,
                "name": ep.name,
                "network": ep.network.as_ref().map(|n| n.to_string()),
                "pod": ep.pod,
                "podUID": ep.pod_uid,
                "node": ep.host,
                "containerID": ep.container_id,
                "interface": ep.ifname,
                "addresses": addresses,
            })
        }
        Subject::Address {
            network,
            address,
            fingerprint,
            shard,
        } => json!({
            "kind": "Address",
            "network": network.to_string(),
            "addresses": [address.to_string()],
            "fingerprint": format!("{fingerprint:016x}"),
            "shard": shard,
        }),
        Subject::Shard {
            namespace,
            name,
            network,
            ..
        } => json!({
            "kind": "AllocationShard",
            "namespace": namespace,
            "name": name,
            "network": network.to_string(),
        }),
    };
    v["reason"] = json!(s.finding.reason.as_str());
    v["outcome"] = json!(s.outcome.as_str());
    match &s.outcome {
        Outcome::Freed(a) => v["freed"] = json!(a),
        Outcome::Kept(why) | Outcome::Failed(why) => v["detail"] = json!(why),
        _ => {}
    }
    v
}
