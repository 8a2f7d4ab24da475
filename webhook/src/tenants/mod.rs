//! The TenantConfig side of the webhook: which TenantConfig TenantNetworks use, recording
//! the ids admissions hand out, and freeing them.
//!
//! * **Reserve.** A TenantNetwork CREATE that gets an id records it in the TenantConfig
//!   before the webhook answers, with an optimistic-concurrency write (the object's
//!   `resourceVersion`): two replicas can never record one id twice, the loser of a race
//!   reads the TenantConfig again and picks again, a bounded number of times with
//!   jittered backoff. Within one replica the admissions waiting are recorded together,
//!   in one write (a group commit of up to 256), so replicas contend with each other only
//!   and a burst costs a few writes, not one each. A dry run records nothing.
//! * **Free.** A watch of TenantNetworks frees the id of a deleted TenantNetwork (the one
//!   recorded under its token) at once. A reconciliation, every `interval`, frees the ids
//!   whose token no TenantNetwork carries and that are older than `grace`: the creates that
//!   failed after admission (AlreadyExists, another webhook's denial, a timeout) and deletes
//!   the watch missed while no replica ran.
//!
//! DANM wrote the id in admission and never looked back: a failed create leaked its id and
//! a repeated delete could free an id another network had meanwhile been given.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use danm_core::admit::vni::{self, VNI_RESERVATION_ANNOTATION, VniType};
use danm_core::admit::{Admitted, Denial, Environment, NetworkRequest, admit_network};
use danm_crds::{TenantConfig, TenantNetwork, VniReservation};
use futures::StreamExt;
use kube::api::{Api, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{Mutex, mpsc, oneshot};

mod calls;
mod free;

use calls::{CallError, backoff, bounded};
use free::gone_of;

use crate::links::Links;
use crate::metrics::Metrics;

/// How the ids are kept.
#[derive(Clone, Copy, Debug)]
pub struct TenantsConfig {
    /// A reservation no TenantNetwork carries is freed once this old.
    pub grace: Duration,
    /// How often reservations are reconciled.
    pub interval: Duration,
    /// Attempts at a TenantConfig write before the admission gives up (and the API server
    /// reports the webhook's error to the client, who retries).
    pub attempts: u32,
    /// Reservations of one namespace that no TenantNetwork carries yet, past which a create
    /// of that namespace is answered "try again": what reviews that never become objects
    /// (a caller other than the API server, where `--client-ca` is not set) can hold.
    pub max_pending_per_namespace: usize,
}

impl Default for TenantsConfig {
    fn default() -> Self {
        TenantsConfig {
            grace: Duration::from_secs(300),
            interval: Duration::from_secs(60),
            attempts: 8,
            max_pending_per_namespace: 256,
        }
    }
}

/// Why an admission could not be decided (as opposed to a denial).
#[derive(Debug, thiserror::Error)]
pub enum TenantsError {
    /// The TenantConfig kept changing under this replica.
    #[error("TenantConfig {0} kept changing while an id was recorded in it; try again")]
    Busy(String),
    /// The holder of a reservation could not be read.
    #[error("cannot read TenantNetwork {network} to confirm it holds no id: {reason}")]
    Holder {
        /// The TenantNetwork (`namespace/name`).
        network: String,
        /// Why.
        reason: String,
    },
    /// The API server refused a read or write of a TenantConfig (not a conflict).
    #[error("the API server refused a request on TenantConfig {name}: {reason}")]
    Refused {
        /// The TenantConfig.
        name: String,
        /// Its message.
        reason: String,
    },
    /// The API server could not be reached or answered with an error.
    #[error("cannot reach the API server for TenantConfig {name}: {reason}")]
    Unreachable {
        /// The TenantConfig.
        name: String,
        /// Why.
        reason: String,
    },
    /// The caches have not listed the API server's objects yet.
    #[error("the webhook has not listed TenantConfigs and TenantNetworks yet; try again")]
    NotReady,
    /// The namespace has too many reservations no TenantNetwork carries yet.
    #[error(
        "namespace {namespace} has {pending} VLAN/VxLAN ids reserved for TenantNetworks not stored yet (the limit); try again once they are stored or freed"
    )]
    TooManyPending {
        /// The namespace.
        namespace: String,
        /// How many.
        pending: usize,
    },
}

/// An admission's outcome for a TenantNetwork CREATE.
pub type Decision = Result<Result<Admitted, Denial>, TenantsError>;

/// Most admissions recorded in one TenantConfig write.
const MAX_BATCH: usize = 256;

/// A network admission request, owned (to wait in the queue).
#[derive(Debug)]
struct OwnedRequest {
    operation: danm_core::admit::Operation,
    kind: danm_core::NetworkKind,
    namespace: String,
    name: String,
    object: Option<serde_json::Value>,
    old_object: Option<serde_json::Value>,
}

impl OwnedRequest {
    fn from(r: &NetworkRequest<'_>) -> OwnedRequest {
        OwnedRequest {
            operation: r.operation,
            kind: r.kind,
            namespace: r.namespace.to_owned(),
            name: r.name.to_owned(),
            object: r.object.cloned(),
            old_object: r.old_object.cloned(),
        }
    }
    fn borrow(&self) -> NetworkRequest<'_> {
        NetworkRequest {
            operation: self.operation,
            kind: self.kind,
            namespace: &self.namespace,
            name: &self.name,
            object: self.object.as_ref(),
            old_object: self.old_object.as_ref(),
        }
    }
}

/// An admission waiting for its id to be recorded.
#[derive(Debug)]
struct Pending {
    request: OwnedRequest,
    token: String,
    reply: oneshot::Sender<Decision>,
}

/// Decides a TenantNetwork CREATE on `config` (a random NIC profile when none is named),
/// with the host links the other networks ask for.
fn decide(
    request: &NetworkRequest<'_>,
    token: &str,
    config: Option<&TenantConfig>,
    links: &Links,
) -> Result<Admitted, Denial> {
    let mut choose = |n: usize| fastrand::usize(..n);
    admit_network(
        request,
        &mut Environment {
            tenant_config: config,
            connected_pod: None,
            choose: &mut choose,
            reservation_token: token,
            links: &links.read(),
        },
    )
}

/// A TenantNetwork that is gone, as far as its id is concerned.
#[derive(Debug)]
struct Gone {
    token: Option<String>,
    legacy: Option<(String, VniType, u32)>,
}

/// See the module overview.
pub struct Tenants {
    client: Client,
    configs: Store<TenantConfig>,
    networks: Store<TenantNetwork>,
    /// This replica's turn to write, and the newest TenantConfig it has seen.
    writer: Mutex<Option<TenantConfig>>,
    gone: mpsc::UnboundedSender<Gone>,
    reservations: mpsc::UnboundedSender<Pending>,
    links: Arc<Links>,
    metrics: Arc<Metrics>,
    config: TenantsConfig,
}

impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenants")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tenants {
    /// The reservation tokens the stored TenantNetworks carry (a reservation whose token no
    /// TenantNetwork carries is pending, or leaked).
    fn carried_tokens(&self) -> HashSet<String> {
        self.networks
            .state()
            .iter()
            .filter_map(|tn| tn.annotations().get(VNI_RESERVATION_ANNOTATION).cloned())
            .collect()
    }

    /// Starts the watches of TenantConfigs and TenantNetworks and the reconciliation.
    pub fn start(
        client: Client,
        links: Arc<Links>,
        metrics: Arc<Metrics>,
        config: TenantsConfig,
    ) -> Arc<Tenants> {
        let (configs, config_writer) = reflector::store();
        let (networks, network_writer) = reflector::store();
        let (gone, gone_rx) = mpsc::unbounded_channel();
        let (reservations, queue) = mpsc::unbounded_channel();
        let tenants = Arc::new(Tenants {
            client: client.clone(),
            configs,
            networks,
            writer: Mutex::new(None),
            gone,
            reservations,
            links,
            metrics,
            config,
        });
        let api: Api<TenantConfig> = Api::all(client.clone());
        tokio::spawn(async move {
            let stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(config_writer)
                .boxed();
            stream
                .for_each(|e| async move {
                    if let Err(e) = e {
                        tracing::warn!(error = %e, "TenantConfig watch failed, retrying");
                    }
                })
                .await;
        });
        let api: Api<TenantNetwork> = Api::all(client);
        let fed = Arc::clone(&tenants);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .reflect(network_writer)
                .boxed();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Delete(tn)) => {
                        let _ = fed.gone.send(gone_of(&tn));
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "TenantNetwork watch failed, retrying"),
                }
            }
        });
        tokio::spawn(Arc::clone(&tenants).reconcile_forever(gone_rx));
        tokio::spawn(Arc::clone(&tenants).record_forever(queue));
        tenants
    }

    /// Whether the watches have listed what exists (without waiting).
    pub fn is_ready(&self) -> bool {
        use futures::FutureExt as _;
        self.configs.wait_until_ready().now_or_never().is_some()
            && self.networks.wait_until_ready().now_or_never().is_some()
            && self.links.is_synced()
    }

    /// The TenantConfig TenantNetworks use: as DANM, the first by name.
    pub fn current(&self) -> Option<Arc<TenantConfig>> {
        self.configs
            .state()
            .into_iter()
            .min_by(|a, b| a.name_any().cmp(&b.name_any()))
    }

    /// Admits a TenantNetwork CREATE: decided on the TenantConfig, and the id it hands out
    /// recorded there (unless `dry_run`) before the answer.
    pub async fn admit_create(
        &self,
        request: &NetworkRequest<'_>,
        token: &str,
        dry_run: bool,
    ) -> Decision {
        // Before the watches have listed, "no TenantConfig" would be a wrong denial.
        if !self.is_ready() {
            return Err(TenantsError::NotReady);
        }
        let first = decide(request, token, self.current().as_deref(), &self.links);
        let needs_write = matches!(&first, Ok(a) if a.reservation.is_some());
        if !needs_write || dry_run {
            return Ok(first);
        }
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            request: OwnedRequest::from(request),
            token: token.to_owned(),
            reply,
        };
        if self.reservations.send(pending).is_err() {
            return Err(TenantsError::NotReady);
        }
        answer.await.unwrap_or(Err(TenantsError::NotReady))
    }

    /// Records the ids of queued admissions: every admission waiting is decided again on
    /// one working copy of the TenantConfig, in turn, and all their ids are written in one
    /// optimistic-concurrency write (a group commit); a lost race reads the TenantConfig
    /// again and decides the whole batch again.
    async fn record_forever(self: Arc<Self>, mut queue: mpsc::UnboundedReceiver<Pending>) {
        while let Some(first) = queue.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            // An admission whose caller has gone (the API server's timeout) is not
            // recorded: its id would only wait for the reconciliation.
            batch.retain(|p| !p.reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let decisions = self.record(&batch).await;
            for (pending, decision) in batch.into_iter().zip(decisions) {
                let _ = pending.reply.send(decision);
            }
        }
    }

    async fn record(&self, batch: &[Pending]) -> Vec<Decision> {
        let fail = |e: &dyn Fn() -> TenantsError| batch.iter().map(|_| Err(e())).collect();
        let Some(snapshot) = self.current() else {
            // The TenantConfig went away since the first decision: decide again, without it.
            return batch
                .iter()
                .map(|p| Ok(decide(&p.request.borrow(), &p.token, None, &self.links)))
                .collect();
        };
        let name = snapshot.name_any();
        let api: Api<TenantConfig> = Api::all(self.client.clone());
        let mut latest = self.writer.lock().await;
        // The newer of this replica's last write and the watch's copy (another replica may
        // have written since): starting from an old copy costs a conflict. Only a copy of
        // the same object: a TenantConfig deleted and created again has a new uid and
        // starts its generation at 1 again.
        let mut config = match latest.as_ref() {
            Some(c)
                if same_object(c, &snapshot)
                    && c.metadata.generation >= snapshot.metadata.generation =>
            {
                c.clone()
            }
            _ => (*snapshot).clone(),
        };
        // Tokens the stored TenantNetworks carry: a reservation without one is pending.
        let carried = self.carried_tokens();
        for attempt in 0..self.config.attempts {
            let mut working = config.clone();
            // The grace period counts from the write: the network is stored just after.
            let since = jiff::Timestamp::now().to_string();
            let mut decisions = Vec::with_capacity(batch.len());
            let mut picks = Vec::new();
            for p in batch {
                let pending = pending_in(&working, &p.request.namespace, &p.token, &carried);
                if pending >= self.config.max_pending_per_namespace {
                    decisions.push(Err(TenantsError::TooManyPending {
                        namespace: p.request.namespace.clone(),
                        pending,
                    }));
                    continue;
                }
                let decision = decide(&p.request.borrow(), &p.token, Some(&working), &self.links);
                if let Ok(admitted) = &decision
                    && let Some(pick) = &admitted.reservation
                {
                    let holder = VniReservation {
                        network: format!("{}/{}", p.request.namespace, p.request.name),
                        token: p.token.clone(),
                        since: since.clone(),
                        link: pick.link.clone(),
                    };
                    vni::reserve(&mut working, pick, holder.clone())
                        .expect("an id decided on this very copy is free in it");
                    picks.push((holder, pick.clone()));
                }
                decisions.push(Ok(decision));
            }
            if picks.is_empty() {
                return decisions;
            }
            match bounded(api.replace(&name, &PostParams::default(), &working)).await {
                Ok(written) => {
                    self.metrics.reserved.inc_by(picks.len() as u64);
                    for (holder, pick) in &picks {
                        tracing::info!(
                            network = %holder.network, profile = %pick.profile,
                            vni_type = %pick.vni_type, id = pick.id, tenant_config = %name,
                            batch = batch.len(), "reserved an id"
                        );
                    }
                    *latest = Some(written);
                    return decisions;
                }
                Err(CallError::Conflict) => {
                    self.metrics.conflicts.inc();
                }
                Err(e) => return fail(&|| e.of(&name)),
            }
            if attempt + 1 == self.config.attempts {
                break;
            }
            backoff(attempt).await;
            config = match bounded(api.get(&name)).await {
                Ok(c) => c,
                Err(e) => return fail(&|| e.of(&name)),
            };
            *latest = Some(config.clone());
        }
        fail(&|| TenantsError::Busy(name.clone()))
    }
}

/// Reservations of `namespace` in `config` that no stored TenantNetwork carries (other
/// than `token`'s own, a retried admission).
fn pending_in(
    config: &TenantConfig,
    namespace: &str,
    token: &str,
    carried: &HashSet<String>,
) -> usize {
    let prefix = format!("{namespace}/");
    vni::reservations(config)
        .iter()
        .filter(|h| {
            h.holder.network.starts_with(&prefix)
                && h.holder.token != token
                && !carried.contains(&h.holder.token)
        })
        .count()
}

/// Whether two copies are of one object: same name and uid (a TenantConfig deleted and
/// created again is another object, whatever its generation says).
pub(super) fn same_object(a: &TenantConfig, b: &TenantConfig) -> bool {
    a.name_any() == b.name_any() && a.metadata.uid == b.metadata.uid
}
