//! The client load, the same for both implementations: `clients` concurrent callers first
//! fill the network with `fill` allocations, then churn: each caller releases its oldest
//! address and allocates a new one, `churn` times in all.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub use crate::stats::{Latencies, round2};
use async_trait::async_trait;

/// An IP address manager under test.
#[async_trait]
pub trait Ipam: Send + Sync {
    /// Allocates one address for the owner `cid`, as caller `caller`.
    async fn allocate(&self, caller: usize, cid: &str) -> anyhow::Result<String>;
    /// Releases the address `ip` of `cid`.
    async fn release(&self, caller: usize, cid: &str, ip: &str) -> anyhow::Result<()>;
}

/// What one phase measured.
#[derive(Debug, Default)]
pub struct Phase {
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Allocate calls.
    pub allocate: Latencies,
    /// Release calls.
    pub release: Latencies,
}

/// What the whole load measured.
#[derive(Debug)]
pub struct LoadResult {
    /// The fill phase.
    pub fill: Phase,
    /// The churn phase.
    pub churn: Phase,
    /// Addresses held by two live owners at the end (must be 0).
    pub duplicates: usize,
    /// Live owners at the end.
    pub held: usize,
}

type Held = VecDeque<(String, String)>;

/// Runs the fill phase, calls `between` (to read counters), then the churn phase.
pub async fn run(
    ipam: Arc<dyn Ipam>,
    clients: usize,
    fill: usize,
    churn: usize,
    mut between: impl AsyncFnMut() -> anyhow::Result<()>,
) -> anyhow::Result<LoadResult> {
    let mut held: Vec<Held> = vec![VecDeque::new(); clients];
    let fill_phase = phase(&ipam, &mut held, fill, false).await?;
    between().await?;
    let churn_phase = phase(&ipam, &mut held, churn, true).await?;
    let addresses: Vec<&String> = held.iter().flatten().map(|(_, ip)| ip).collect();
    let distinct: HashSet<&&String> = addresses.iter().collect();
    Ok(LoadResult {
        fill: fill_phase,
        churn: churn_phase,
        duplicates: addresses.len() - distinct.len(),
        held: addresses.len(),
    })
}

async fn phase(
    ipam: &Arc<dyn Ipam>,
    held: &mut [Held],
    count: usize,
    churn: bool,
) -> anyhow::Result<Phase> {
    let next = Arc::new(AtomicUsize::new(0));
    let prefix = if churn { "churn" } else { "fill" };
    let started = Instant::now();
    let tasks: Vec<_> = held
        .iter_mut()
        .enumerate()
        .map(|(caller, mine)| {
            let ipam = Arc::clone(ipam);
            let next = Arc::clone(&next);
            let mut mine = std::mem::take(mine);
            tokio::spawn(async move {
                let mut allocate = Latencies::default();
                let mut release = Latencies::default();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        return anyhow::Ok((mine, allocate, release));
                    }
                    if churn && let Some((cid, ip)) = mine.pop_front() {
                        let t = Instant::now();
                        ipam.release(caller, &cid, &ip).await?;
                        release.push(t.elapsed());
                    }
                    let cid = format!("{prefix}{n}");
                    let t = Instant::now();
                    let ip = ipam.allocate(caller, &cid).await?;
                    allocate.push(t.elapsed());
                    mine.push_back((cid, ip));
                }
            })
        })
        .collect();
    let mut result = Phase::default();
    for (slot, task) in held.iter_mut().zip(tasks) {
        let (mine, allocate, release) = task.await??;
        *slot = mine;
        result.allocate.extend(allocate);
        result.release.extend(release);
    }
    result.elapsed = started.elapsed();
    Ok(result)
}
