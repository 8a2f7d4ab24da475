//! The gate: isolation from a pod's first packet. The `danm` CNI plugin, once ipamd has
//! recorded a new sandbox's interfaces and before it builds any of them, calls
//! `danm.policer.v1.Gate/PodStarting` on this node's policer over a unix socket. The gate
//! waits until the index holds the pod and the DanmEp of every interface named (looked up
//! by name, no scan), then waits for a round that began after that and answers with the
//! sandbox's state as the rounds left it: its table loaded (or no policy selects it), or why not.
//! The plugin fails the ADD on any error, so a pod a policy selects never has an interface
//! before its table (the rules name interfaces by name: they hold before the links exist).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use danm_proto::gate::v1::gate_server::{self, GateServer};
use danm_proto::gate::v1::{PodStartingRequest, PodStartingResponse};
use tokio::sync::{Notify, watch};
use tonic::{Request, Response, Status};

use crate::index::{Index, PodKey, Sandbox};
use crate::metrics::Metrics;

/// A sandbox: a pod and its network namespace.
pub type SandboxKey = (PodKey, String);

/// A sandbox's state after the last round that looked at it: its table is as the policies
/// decide (true: it isolates something; false: no policy selects the pod, no table), or
/// why its apply failed.
pub type SandboxState = Result<bool, String>;

/// The rounds' numbering, the last one finished, and each sandbox's state, shared by the
/// controller and the gate. A round looks only at the pods a change may affect, so the
/// states are kept across rounds: a sandbox's is the one its last round left.
#[derive(Debug)]
pub struct Rounds {
    started: AtomicU64,
    done: watch::Sender<u64>,
    sandboxes: Mutex<BTreeMap<SandboxKey, SandboxState>>,
}

impl Default for Rounds {
    fn default() -> Self {
        Rounds {
            started: AtomicU64::new(0),
            done: watch::Sender::new(0),
            sandboxes: Mutex::default(),
        }
    }
}

impl Rounds {
    /// Numbers a round that is about to read the index (call under the index lock).
    pub fn begin(&self) -> u64 {
        self.started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The number the next round will get (read under the index lock).
    fn next(&self) -> u64 {
        self.started.load(Ordering::Acquire) + 1
    }

    /// Records what a round did to sandboxes (None: the sandbox is gone).
    pub fn record(&self, states: impl IntoIterator<Item = (SandboxKey, Option<SandboxState>)>) {
        let mut sandboxes = self.sandboxes.lock().expect("the sandboxes lock");
        for (key, state) in states {
            match state {
                Some(state) => {
                    sandboxes.insert(key, state);
                }
                None => {
                    sandboxes.remove(&key);
                }
            }
        }
    }

    /// Publishes that round `id` finished (its states recorded).
    pub fn finish(&self, id: u64) {
        self.done.send_replace(id);
    }

    fn state(&self, key: &SandboxKey) -> Option<SandboxState> {
        self.sandboxes
            .lock()
            .expect("the sandboxes lock")
            .get(key)
            .cloned()
    }
}

/// The gate's service.
#[derive(Debug)]
pub struct Gate {
    /// The controller's index.
    pub index: Arc<Mutex<Index>>,
    /// Wakes the controller for a round.
    pub changed: Arc<Notify>,
    /// The controller's rounds.
    pub rounds: Arc<Rounds>,
    /// This node.
    pub node: String,
    /// How long a call may wait for the pod and its records to arrive and be applied.
    pub wait: Duration,
    /// Counts the calls.
    pub metrics: Arc<Metrics>,
}

/// Why a call was not answered with a loaded table.
#[derive(Debug)]
enum Refusal {
    Invalid(String),
    Refused(String),
    Failed(String),
    Timeout(String),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Refusal::Invalid(_) | Refusal::Refused(_) => "refused",
            Refusal::Failed(_) => "failed",
            Refusal::Timeout(_) => "timeout",
        }
    }

    fn status(self) -> Status {
        match self {
            Refusal::Invalid(m) => Status::invalid_argument(m),
            Refusal::Refused(m) | Refusal::Failed(m) => Status::failed_precondition(m),
            Refusal::Timeout(m) => Status::deadline_exceeded(m),
        }
    }
}

fn sandbox(request: PodStartingRequest) -> Result<Sandbox, Refusal> {
    for (field, value) in [
        ("pod_namespace", &request.pod_namespace),
        ("pod_name", &request.pod_name),
        ("container_id", &request.container_id),
        ("netns", &request.netns),
    ] {
        if value.is_empty() {
            return Err(Refusal::Invalid(format!("{field}: empty")));
        }
    }
    if request.interfaces.is_empty() {
        return Err(Refusal::Invalid("interfaces: empty".into()));
    }
    Ok(Sandbox {
        namespace: request.pod_namespace,
        pod: request.pod_name,
        uid: request.pod_uid,
        container_id: request.container_id,
        netns: request.netns,
        interfaces: request.interfaces,
    })
}

impl Gate {
    async fn admit(&self, sandbox: &Sandbox) -> Result<bool, Refusal> {
        let deadline = Instant::now() + self.wait;
        let pod = format!("pod {}/{}", sandbox.namespace, sandbox.pod);
        // 1. The pod and its records reach the index (the watches lag the API by a moment).
        let after = loop {
            {
                let index = self.index.lock().expect("the index lock");
                match index.holds_sandbox(sandbox, &self.node) {
                    Ok(true) => break self.rounds.next(),
                    Ok(false) => {}
                    Err(e) => return Err(Refusal::Refused(format!("{pod}: {e}"))),
                }
            }
            if Instant::now() >= deadline {
                return Err(Refusal::Timeout(format!(
                    "{pod} (UID {:?}) or the DanmEps of its interfaces {:?} in {} did not reach \
                     the policer within {:?}: is the policer's watch of the API server failing \
                     (its log)?",
                    sandbox.uid, sandbox.interfaces, sandbox.netns, self.wait
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // 2. A round that began after they did applies the sandbox's table.
        self.changed.notify_one();
        let mut done = self.rounds.done.subscribe();
        match tokio::time::timeout_at(deadline.into(), done.wait_for(|id| *id >= after)).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err(Refusal::Failed("the policer is stopping".into())),
            Err(_) => {
                return Err(Refusal::Timeout(format!(
                    "{pod}: no round of the policer ended within {:?} (is it still listing \
                     the cluster?)",
                    self.wait
                )));
            }
        }
        let key = (
            (sandbox.namespace.clone(), sandbox.pod.clone()),
            sandbox.netns.clone(),
        );
        match self.rounds.state(&key) {
            Some(Ok(isolated)) => Ok(isolated),
            Some(Err(why)) => Err(Refusal::Failed(format!(
                "{pod}: its table could not be loaded in {}: {why}",
                sandbox.netns
            ))),
            None => Err(Refusal::Failed(format!(
                "{pod}: the round did not reach the sandbox {}",
                sandbox.netns
            ))),
        }
    }
}

#[tonic::async_trait]
impl gate_server::Gate for Gate {
    async fn pod_starting(
        &self,
        request: Request<PodStartingRequest>,
    ) -> Result<Response<PodStartingResponse>, Status> {
        let started = Instant::now();
        let outcome = match sandbox(request.into_inner()) {
            Ok(sandbox) => self
                .admit(&sandbox)
                .await
                .map(|isolated| (sandbox, isolated)),
            Err(e) => Err(e),
        };
        let seconds = started.elapsed().as_secs_f64();
        match outcome {
            Ok((sandbox, isolated)) => {
                self.metrics
                    .gate_call(if isolated { "isolated" } else { "open" }, seconds);
                tracing::info!(namespace = %sandbox.namespace, pod = %sandbox.pod, netns = %sandbox.netns, isolated, seconds, "gate: the sandbox's rules are in place");
                Ok(Response::new(PodStartingResponse { isolated }))
            }
            Err(refusal) => {
                self.metrics.gate_call(refusal.label(), seconds);
                tracing::warn!(refusal = ?refusal, seconds, "gate: refused");
                Err(refusal.status())
            }
        }
    }
}

/// Why the gate could not listen.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket's folder, or the socket.
    #[error("the gate's socket {path}: {source}")]
    Socket {
        /// The socket's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("serving the gate: {0}")]
    Serve(#[from] tonic::transport::Error),
}

/// Serves the gate on `socket` (root's alone: mode 0600) until `shutdown`; a socket left by
/// an earlier run is replaced, one a live process answers on is not (an error), and the
/// socket is removed on the way out if it is still this run's.
pub async fn serve(
    socket: &Path,
    gate: Gate,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
    let io = |source| ServeError::Socket {
        path: socket.to_owned(),
        source,
    };
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            // A socket someone still answers on is another policer's: not taken over.
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process serves it (a second policer on this node?)",
                )));
            }
            std::fs::remove_file(socket).map_err(io)?
        }
        Ok(_) => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "exists and is not a socket: not replaced",
            )));
        }
        Err(_) => {}
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(io)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    let ours = std::fs::symlink_metadata(socket).map_err(io)?.ino();
    tracing::info!(socket = %socket.display(), "gate listening");
    let served = tonic::transport::Server::builder()
        .add_service(GateServer::new(gate))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await;
    // Removed only if it is still the one this run made.
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.ino() == ours) {
        let _ = std::fs::remove_file(socket);
    }
    Ok(served?)
}
