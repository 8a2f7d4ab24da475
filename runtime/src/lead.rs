//! Leader election for replicated writers: the Lease flags, and "run while leading".
//!
//! A writer that must run on one replica at a time (the cleaner, svcwatcher) joins the
//! election of a Lease and runs a *term* each time it holds it: [`Election::run`] starts the
//! term when the Lease is gained, tells it to end (through [`TermEnding`]) when the Lease is
//! lost or the process is asked to stop, waits for it to return, and releases the Lease on
//! the way out so that another replica takes over at once. The loop itself, [`lead`], only
//! reads a `watch` channel of "am I leading", so it is tested without an API server.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt as _;
use tokio::sync::watch;

use crate::RuntimeError;

/// How long a term that returned by itself, while the Lease is still held, waits before it
/// is started again (a controller that stops at once would otherwise spin).
pub const RESTART_DELAY: Duration = Duration::from_secs(1);

/// The Lease flags of a replicated writer (flatten them into the binary's arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct LeaseArgs {
    /// Namespace of the Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    /// Name of the Lease that elects the one active replica (default: `danm-cleaner` for
    /// the cleaner, `danm-svcwatcher` for svcwatcher).
    #[arg(long)]
    pub lease: Option<String>,
    /// This replica's identity in the Lease (default: the pod name, else the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl LeaseArgs {
    /// Joins the election these flags name; `default_lease` when `--lease` is not given.
    pub async fn elect(
        &self,
        client: kube::Client,
        default_lease: &str,
    ) -> Result<Election, RuntimeError> {
        let name = self.lease.as_deref().unwrap_or(default_lease);
        crate::elect(client, &self.namespace, name, self.identity.clone()).await
    }
}

/// A running election: `leading` says whether this replica holds the Lease now and
/// changes when that changes; drop it and await `task` to release the Lease.
#[derive(Debug)]
pub struct Election {
    /// This replica's identity in the Lease.
    pub identity: String,
    /// `namespace/name` of the Lease.
    pub lease: String,
    /// Whether it holds the Lease.
    pub leading: watch::Receiver<bool>,
    /// The task renewing the Lease; it releases it once `leading` is dropped.
    pub task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
}

impl Election {
    /// Runs `term` while this replica holds the Lease, until `shutdown` completes (see
    /// [`lead`]), then releases the Lease.
    pub async fn run<T, F>(
        self,
        shutdown: impl Future<Output = ()>,
        term: T,
    ) -> Result<(), RuntimeError>
    where
        T: FnMut(TermEnding) -> F,
        F: Future<Output = ()>,
    {
        let Election {
            identity,
            lease,
            leading,
            task,
        } = self;
        let result = lead(&identity, &lease, leading, shutdown, term).await;
        tracing::info!(%identity, %lease, "releasing the Lease");
        let _ = task.await;
        result
    }
}

/// Tells a term when to end: [`TermEnding::wait`] completes once the Lease is lost or the
/// process is stopping. A term must return soon after (finishing, not abandoning, what it
/// was writing).
#[derive(Clone, Debug)]
pub struct TermEnding(watch::Receiver<bool>);

impl TermEnding {
    /// Completes when the term must end.
    pub async fn wait(mut self) {
        // An error means the sender is gone, which happens only once the term is over.
        let _ = self.0.wait_for(|ending| *ending).await;
    }

    /// Whether the term must end now.
    pub fn is_ending(&self) -> bool {
        *self.0.borrow()
    }
}

/// Why a term stopped.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    ReturnedByItself,
    LeaseLost,
    LeaseTaskGone,
    Shutdown,
}

/// Logs a term's panic, if it panicked.
fn log_panic(identity: &str, outcome: Result<(), Box<dyn std::any::Any + Send>>) {
    if let Err(panic) = outcome {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(%identity, panic = %what, "the term panicked");
    }
}

fn task_gone(lease: &str) -> RuntimeError {
    RuntimeError::Lease {
        lease: lease.to_owned(),
        reason: "the task renewing the Lease ended".to_owned(),
    }
}

/// Runs `term` each time `leading` turns true, until `shutdown` completes: a term is told to
/// end when `leading` turns false or `shutdown` completes, and is awaited to the end; a term
/// that returns by itself while leading is started again after [`RESTART_DELAY`]. Dropping
/// `leading` (on return) is what lets the Lease task release the Lease. A term that panics
/// is logged and, like one that returns, started again after the delay. Fails when the
/// Lease task is gone (`leading`'s sender dropped), whether this replica waits for the Lease
/// or holds it (its term is ended first).
pub async fn lead<T, F>(
    identity: &str,
    lease: &str,
    mut leading: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
    mut term: T,
) -> Result<(), RuntimeError>
where
    T: FnMut(TermEnding) -> F,
    F: Future<Output = ()>,
{
    tokio::pin!(shutdown);
    loop {
        // The last value stays readable once the sender is gone: a dead Lease task must not
        // look like a held Lease.
        if leading.has_changed().is_err() {
            return Err(task_gone(lease));
        }
        while !*leading.borrow_and_update() {
            tracing::info!(%identity, %lease, "waiting for the Lease");
            tokio::select! {
                changed = leading.changed() => changed.map_err(|_| task_gone(lease))?,
                _ = &mut shutdown => return Ok(()),
            }
        }
        tracing::info!(%identity, %lease, "holding the Lease: term starts");
        let (end, ending) = watch::channel(false);
        // A panicking term is caught, as a spawned task's would be: logged, then restarted.
        let running = AssertUnwindSafe(term(TermEnding(ending))).catch_unwind();
        tokio::pin!(running);
        let stop = tokio::select! {
            outcome = &mut running => {
                log_panic(identity, outcome);
                Stop::ReturnedByItself
            }
            lost = lease_lost(&mut leading) => match lost {
                Ok(()) => Stop::LeaseLost,
                Err(()) => Stop::LeaseTaskGone,
            },
            _ = &mut shutdown => Stop::Shutdown,
        };
        if stop != Stop::ReturnedByItself {
            end.send_replace(true);
            log_panic(identity, running.await);
        }
        match stop {
            Stop::Shutdown => {
                tracing::info!(%identity, %lease, "term ended: stopping");
                return Ok(());
            }
            Stop::LeaseTaskGone => return Err(task_gone(lease)),
            Stop::LeaseLost => tracing::warn!(%identity, %lease, "lost the Lease: term ended"),
            Stop::ReturnedByItself => {
                tracing::error!(
                    %identity,
                    %lease,
                    "the term ended by itself while holding the Lease; starting it again in {:?}",
                    RESTART_DELAY
                );
                tokio::select! {
                    _ = tokio::time::sleep(RESTART_DELAY) => {}
                    _ = &mut shutdown => return Ok(()),
                }
            }
        }
    }
}

/// Completes when `leading` turns false (`Ok`) or its sender, the Lease task, is gone
/// (`Err`).
async fn lease_lost(leading: &mut watch::Receiver<bool>) -> Result<(), ()> {
    loop {
        leading.changed().await.map_err(|_| ())?;
        if !*leading.borrow_and_update() {
            return Ok(());
        }
    }
}

/// Joins the election of Lease `namespace/name` (created if missing) as `identity` (default:
/// the host name, which is the pod name in a pod). The Lease lasts 15 s and is renewed 5 s
/// before it ends: another replica takes over within 15 s of this one's death.
pub async fn elect(
    client: kube::Client,
    namespace: &str,
    name: &str,
    identity: Option<String>,
) -> Result<Election, RuntimeError> {
    let lease = format!("{namespace}/{name}");
    let identity = identity
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{name}-{}", std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client, name)
        .with_namespace(namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| RuntimeError::Lease {
            lease: lease.clone(),
            reason: e.to_string(),
        })?;
    let (leading, task) = manager.watch().await;
    Ok(Election {
        identity,
        lease,
        leading,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// What the terms did, in order.
    type Journal = Arc<Mutex<Vec<String>>>;

    /// A term that records its start, waits to be told to end, and records its end.
    fn recorded(
        journal: Journal,
    ) -> impl FnMut(TermEnding) -> futures::future::BoxFuture<'static, ()> {
        let mut terms = 0;
        move |ending| {
            terms += 1;
            let (journal, n) = (Arc::clone(&journal), terms);
            Box::pin(async move {
                journal.lock().unwrap().push(format!("start {n}"));
                ending.wait().await;
                journal.lock().unwrap().push(format!("end {n}"));
            })
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    fn entries(journal: &Journal) -> Vec<String> {
        journal.lock().unwrap().clone()
    }

    #[tokio::test]
    async fn a_term_runs_only_while_the_lease_is_held_and_ends_before_the_next() {
        let journal = Journal::default();
        let (leading, rx) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn({
            let term = recorded(Arc::clone(&journal));
            async move { lead("me", "ns/lease", rx, shutdown, term).await }
        });
        settle().await;
        assert!(entries(&journal).is_empty(), "no term before the Lease");
        leading.send_replace(true);
        settle().await;
        assert_eq!(entries(&journal), ["start 1"]);
        leading.send_replace(false);
        settle().await;
        assert_eq!(
            entries(&journal),
            ["start 1", "end 1"],
            "lost Lease ends the term"
        );
        leading.send_replace(true);
        settle().await;
        assert_eq!(entries(&journal), ["start 1", "end 1", "start 2"]);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(
            entries(&journal),
            ["start 1", "end 1", "start 2", "end 2"],
            "shutdown ends the term, and lead returns only after it"
        );
        assert!(
            leading.is_closed(),
            "lead dropped its receiver: the Lease is released"
        );
    }

    #[tokio::test]
    async fn shutdown_while_waiting_for_the_lease_starts_no_term() {
        let journal = Journal::default();
        let (_leading, rx) = watch::channel(false);
        lead(
            "me",
            "ns/lease",
            rx,
            async {},
            recorded(Arc::clone(&journal)),
        )
        .await
        .unwrap();
        assert!(entries(&journal).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_that_returns_by_itself_is_started_again_after_the_delay() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let (_leading, rx) = watch::channel(true);
        let began = tokio::time::Instant::now();
        let term = {
            let starts = Arc::clone(&starts);
            move |_ending: TermEnding| {
                starts.lock().unwrap().push(began.elapsed());
                async {}
            }
        };
        let shutdown = tokio::time::sleep(RESTART_DELAY * 2 + RESTART_DELAY / 2);
        lead("me", "ns/lease", rx, shutdown, term).await.unwrap();
        assert_eq!(
            *starts.lock().unwrap(),
            [Duration::ZERO, RESTART_DELAY, RESTART_DELAY * 2]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_term_that_panics_is_started_again_after_the_delay() {
        let starts = Arc::new(Mutex::new(0));
        let (_leading, rx) = watch::channel(true);
        let term = {
            let starts = Arc::clone(&starts);
            move |_ending: TermEnding| {
                *starts.lock().unwrap() += 1;
                async { panic!("the controller broke") }
            }
        };
        let shutdown = tokio::time::sleep(RESTART_DELAY + RESTART_DELAY / 2);
        lead("me", "ns/lease", rx, shutdown, term).await.unwrap();
        assert_eq!(*starts.lock().unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn no_term_starts_once_the_lease_task_died_during_the_restart_delay() {
        let starts = Arc::new(Mutex::new(0));
        let (leading, rx) = watch::channel(true);
        let term = {
            let starts = Arc::clone(&starts);
            move |_ending: TermEnding| {
                *starts.lock().unwrap() += 1;
                async {}
            }
        };
        let task = tokio::spawn(lead("me", "ns/lease", rx, std::future::pending(), term));
        tokio::time::sleep(RESTART_DELAY / 2).await;
        drop(leading);
        let err = task.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("ns/lease"), "{err}");
        assert_eq!(
            *starts.lock().unwrap(),
            1,
            "no term after the Lease task died"
        );
    }

    #[tokio::test]
    async fn the_lease_task_ending_while_waiting_is_an_error_naming_the_lease() {
        let (leading, rx) = watch::channel(false);
        drop(leading);
        let err = lead("me", "ns/lease", rx, std::future::pending(), |_| async {})
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ns/lease"), "{err}");
    }

    #[tokio::test]
    async fn the_lease_task_ending_while_leading_ends_the_term() {
        let journal = Journal::default();
        let (leading, rx) = watch::channel(true);
        let task = tokio::spawn({
            let term = recorded(Arc::clone(&journal));
            async move { lead("me", "ns/lease", rx, std::future::pending(), term).await }
        });
        settle().await;
        drop(leading);
        assert!(task.await.unwrap().is_err());
        assert_eq!(entries(&journal), ["start 1", "end 1"]);
    }
}
