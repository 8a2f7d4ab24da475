//! svcwatcher: publishes Services on any network. For every Service carrying
//! `danm.io/selector` and a network annotation it keeps EndpointSlices and Endpoints holding
//! the addresses the selected pods' interfaces have on that network (from their DanmEps).
//!
//! A kube-runtime `Controller` over Services, with reflectors of Pods and DanmEps whose
//! changes are mapped to the Services of the pod's namespace that select it. The stores are
//! indexed ([`names`]: the Services of a namespace, the DanmEps of a network), so neither a
//! mapping nor a reconcile scans the cluster: a reconcile reads the DanmEps on its
//! Service's network and their pods, whatever else the cluster holds. `reconcile` computes
//! the slices ([`danm_core::services::slices`]), writes only those that differ
//! (server-side apply), deletes ours that are no longer wanted, and writes the Endpoints;
//! `error_policy` retries after a pause. A Service without the annotations is never
//! touched, except to remove what svcwatcher itself wrote for it before. Slices and
//! Endpoints carry an owner reference to their Service, so they go with it.

mod names;
pub mod objects;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use danm_core::services::{
    PodEndpoint, ServicePort, StoredSlice, Target, selection, selects, slices,
};
use danm_crds::DanmEp;
use danm_runtime::metrics::register;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use objects::{MANAGED_BY, MANAGED_BY_LABEL, SERVICE_LABEL};

/// The field manager of our writes.
pub const FIELD_MANAGER: &str = "danm-svcwatcher";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
pub struct SvcError {
    /// The request.
    what: String,
    /// Why.
    #[source]
    source: kube::Error,
}

fn fail(what: impl Into<String>) -> impl FnOnce(kube::Error) -> SvcError {
    let what = what.into();
    move |source| SvcError { what, source }
}

/// Labels of a reconcile.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// `ok`, `not-ours` or `error`.
    pub result: &'static str,
}

/// svcwatcher's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ResultLabels, Counter>,
    /// EndpointSlices created or changed.
    pub slices_written: Counter,
    /// EndpointSlices deleted.
    pub slices_deleted: Counter,
    /// Endpoints objects written.
    pub endpoints_written: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("danm_svcwatcher");
        let reconciles: Family<ResultLabels, Counter> =
            register(&mut registry, "reconciles", "Service reconciles, by result");
        let slices_written: Counter = register(
            &mut registry,
            "slices_written",
            "EndpointSlices created or changed",
        );
        let slices_deleted: Counter =
            register(&mut registry, "slices_deleted", "EndpointSlices deleted");
        let endpoints_written: Counter = register(
            &mut registry,
            "endpoints_written",
            "Endpoints objects written",
        );
        Metrics {
            registry,
            reconciles,
            slices_written,
            slices_deleted,
            endpoints_written,
        }
    }

    fn reconciled(&self, result: &'static str) {
        self.reconciles
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        danm_runtime::metrics::encode(&self.registry)
    }
}

/// What reconciles share.
struct Context {
    client: kube::Client,
    pods: Store<Pod>,
    endpoints: Store<DanmEp>,
    /// The DanmEps of each network, by the network's namespace-qualified key and the
    /// DanmEp's namespace.
    endpoints_on: Arc<EndpointNames>,
    metrics: Arc<Metrics>,
    members: Arc<Members>,
}

/// The names of the DanmEps on each network, by (their namespace, the network).
type EndpointNames = names::Names<(String, danm_core::NetworkKey)>;

/// Which pods each Service published at its last reconcile, so that a pod that stops being
/// selected (relabelled) triggers the Services it was in, not only those that select it now.
#[derive(Debug, Default)]
struct Members(std::sync::Mutex<MembersState>);

#[derive(Debug, Default)]
struct MembersState {
    /// (namespace, Service) → pods.
    by_service: std::collections::HashMap<(String, String), std::collections::BTreeSet<String>>,
    /// (namespace, pod) → Services.
    by_pod: std::collections::HashMap<(String, String), std::collections::BTreeSet<String>>,
}

impl Members {
    fn set(&self, ns: &str, service: &str, pods: std::collections::BTreeSet<String>) {
        let mut state = self.0.lock().expect("lock");
        let key = (ns.to_owned(), service.to_owned());
        let old = state.by_service.remove(&key).unwrap_or_default();
        for pod in old.difference(&pods) {
            if let Some(s) = state.by_pod.get_mut(&(ns.to_owned(), pod.clone())) {
                s.remove(service);
                if s.is_empty() {
                    state.by_pod.remove(&(ns.to_owned(), pod.clone()));
                }
            }
        }
        for pod in &pods {
            state
                .by_pod
                .entry((ns.to_owned(), pod.clone()))
                .or_default()
                .insert(service.to_owned());
        }
        if !pods.is_empty() {
            state.by_service.insert(key, pods);
        }
    }

    fn services_of(&self, ns: &str, pod: &str) -> Vec<ObjectRef<Service>> {
        let state = self.0.lock().expect("lock");
        state
            .by_pod
            .get(&(ns.to_owned(), pod.to_owned()))
            .into_iter()
            .flatten()
            .map(|s| ObjectRef::new(s).within(ns))
            .collect()
    }
}

/// Runs the controller until `stop` completes.
pub async fn run(
    client: kube::Client,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_changes = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects();
    let endpoints_on = Arc::new(EndpointNames::default());
    let (endpoints, ep_writer) = reflector::store::<DanmEp>();
    let indexed = Arc::clone(&endpoints_on);
    // The index follows each event before the store does (the reflector writes the store,
    // and marks it ready, before it passes an event on): a reconcile that finds the store
    // ready never reads an index behind it (a name not in the store yet is skipped, and
    // its own event triggers the reconcile again).
    let ep_changes = reflector::reflector(
        ep_writer,
        watcher(
            Api::<DanmEp>::all(client.clone()),
            watcher::Config::default(),
        )
        .map_ok(move |event| {
            indexed.follow(&event, at, |ep: &DanmEp| {
                let network = danm_core::endpoint::network(ep)?;
                Some((ep.namespace().unwrap_or_default(), network))
            });
            event
        }),
    )
    .default_backoff()
    .touched_objects();
    let services_in = Arc::new(names::Names::<String>::default());
    let (services, svc_writer) = reflector::store::<Service>();
    let indexed = Arc::clone(&services_in);
    let service_changes = reflector::reflector(
        svc_writer,
        watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        )
        .map_ok(move |event| {
            indexed.follow(&event, at, |svc: &Service| svc.namespace());
            event
        }),
    )
    .default_backoff()
    .applied_objects();
    let controller = Controller::for_stream(service_changes, services.clone());
    let by_pod = (services.clone(), Arc::clone(&services_in));
    let by_ep = (services, services_in);
    let pods_for_eps = pods.clone();
    let members = Arc::new(Members::default());
    let were_in = Arc::clone(&members);
    let context = Arc::new(Context {
        client,
        pods,
        endpoints,
        endpoints_on,
        metrics,
        members,
    });
    controller
        .watches_stream(pod_changes, move |pod: Pod| {
            let ns = pod.namespace().unwrap_or_default();
            let mut services = selecting(&by_pod, &ns, pod.labels());
            services.extend(were_in.services_of(&ns, &pod.name_any()));
            services
        })
        .watches_stream(ep_changes, move |ep: DanmEp| {
            let ns = ep.namespace().unwrap_or_default();
            let labels = pods_for_eps
                .get(&ObjectRef::new(&ep.spec.pod).within(&ns))
                .map(|p| p.labels().clone())
                .unwrap_or_default();
            selecting(&by_ep, &ns, &labels)
        })
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, context)
        .for_each(|_| async {})
        .await;
}

/// An object's namespace and name.
fn at<K: kube::Resource>(object: &K) -> (String, String) {
    (
        object.meta().namespace.clone().unwrap_or_default(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// The Services of `namespace` that select a pod with `labels` (from the Services of that
/// namespace only).
fn selecting(
    (services, services_in): &(Store<Service>, Arc<names::Names<String>>),
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<ObjectRef<Service>> {
    services_in
        .get(&namespace.to_owned())
        .into_iter()
        .filter_map(|name| services.get(&ObjectRef::new(&name).within(namespace)))
        .filter(|s| {
            selection(namespace, s.annotations())
                .ok()
                .flatten()
                .is_some_and(|sel| selects(&sel.selector, labels))
        })
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

async fn reconcile(service: Arc<Service>, ctx: Arc<Context>) -> Result<Action, SvcError> {
    // Never publish from half-filled caches: an empty store would unpublish every pod. Not
    // awaited here: the reflectors only advance while the controller polls them.
    let filled = |ready: Option<Result<(), _>>| ready.is_some_and(|r: Result<(), _>| r.is_ok());
    if !filled(futures::FutureExt::now_or_never(
        ctx.pods.wait_until_ready(),
    )) || !filled(futures::FutureExt::now_or_never(
        ctx.endpoints.wait_until_ready(),
    )) {
        tracing::debug!(service = %service.name_any(), "caches not filled yet: again in 0.5 s");
        return Ok(Action::requeue(Duration::from_millis(500)));
    }
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    if service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
        && selection(&ns, service.annotations())
            .ok()
            .flatten()
            .is_some()
    {
        // Kubernetes' own controllers publish a Service with a selector: writing its
        // Endpoints too would be a fight. DANM's Services are selectorless.
        tracing::warn!(service = %format!("{ns}/{name}"), "has both spec.selector and danm.io/selector: left to Kubernetes; remove spec.selector");
        forget(&ctx, &ns, &name).await?;
        ctx.members.set(&ns, &name, Default::default());
        ctx.metrics.reconciled("not-ours");
        return Ok(Action::await_change());
    }
    let selected = match selection(&ns, service.annotations()) {
        Ok(Some(s)) => s,
        Ok(None) => {
            // Not DANM's (any more): remove only what we wrote for it.
            forget(&ctx, &ns, &name).await?;
            ctx.members.set(&ns, &name, Default::default());
            ctx.metrics.reconciled("not-ours");
            return Ok(Action::await_change());
        }
        Err(e) => {
            tracing::warn!(service = %format!("{ns}/{name}"), error = %e, "annotations unusable: nothing published");
            forget(&ctx, &ns, &name).await?;
            ctx.members.set(&ns, &name, Default::default());
            ctx.metrics.reconciled("not-ours");
            return Ok(Action::await_change());
        }
    };
    let spec = service.spec.clone().unwrap_or_default();
    let ports: Vec<ServicePort> = spec
        .ports
        .unwrap_or_default()
        .into_iter()
        .map(|p| ServicePort {
            name: p.name.unwrap_or_default(),
            protocol: p.protocol.unwrap_or_else(|| "TCP".into()),
            port: p.port,
            target: match p.target_port {
                None => Target::Same,
                Some(IntOrString::Int(n)) => Target::Number(n),
                Some(IntOrString::String(s)) => match s.parse::<i32>() {
                    Ok(n) => Target::Number(n),
                    Err(_) => Target::Named(s),
                },
            },
        })
        .collect();
    // The DanmEps on the Service's network in its namespace, and their pods: no other pod
    // can be an endpoint (one without an address on the network is none).
    let mut addresses: BTreeMap<(String, String), Vec<IpAddr>> = BTreeMap::new();
    for ep_name in ctx
        .endpoints_on
        .get(&(ns.clone(), selected.network.clone()))
    {
        let Some(ep) = ctx.endpoints.get(&ObjectRef::new(&ep_name).within(&ns)) else {
            continue;
        };
        let s = &ep.spec;
        if danm_core::endpoint::network(&ep).as_ref() != Some(&selected.network) {
            continue;
        }
        for a in [&s.interface.address, &s.interface.address_ipv6] {
            if let Some(Ok(ip)) = a.split('/').next().map(str::parse::<IpAddr>) {
                addresses
                    .entry((s.pod.clone(), s.pod_uid.clone()))
                    .or_default()
                    .push(ip);
            }
        }
    }
    let names: std::collections::BTreeSet<&String> = addresses.keys().map(|(pod, _)| pod).collect();
    let pods: Vec<PodEndpoint> = names
        .into_iter()
        .filter_map(|pod| ctx.pods.get(&ObjectRef::new(pod).within(&ns)))
        .filter(|p| selects(&selected.selector, p.labels()))
        .map(|p| pod_endpoint(&p, &addresses))
        .filter(|p| !p.addresses.is_empty())
        .collect();
    let (api, select) = our_slices(&ns, &ctx.client, &name);
    let existing = api
        .list(&select)
        .await
        .map_err(fail(format!("list EndpointSlices of {ns}/{name}")))?
        .items;
    let stored: Vec<StoredSlice> = existing.iter().filter_map(objects::stored).collect();
    let wanted = slices(
        &name,
        &ports,
        spec.publish_not_ready_addresses.unwrap_or(false),
        &pods,
        &stored,
    );
    write(&ctx, &service, &existing, &wanted).await?;
    ctx.members
        .set(&ns, &name, pods.iter().map(|p| p.name.clone()).collect());
    ctx.metrics.reconciled("ok");
    Ok(Action::requeue(Duration::from_secs(300)))
}

fn pod_endpoint(pod: &Pod, addresses: &BTreeMap<(String, String), Vec<IpAddr>>) -> PodEndpoint {
    let name = pod.name_any();
    let uid = pod.uid().unwrap_or_default();
    let mut found = addresses
        .get(&(name.clone(), uid.clone()))
        .cloned()
        .unwrap_or_default();
    // DanmEps written without a pod UID (DANM's) name the pod by name only.
    found.extend(
        addresses
            .get(&(name.clone(), String::new()))
            .into_iter()
            .flatten(),
    );
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let named_ports = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            Some((
                p.name.clone()?,
                p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                p.container_port,
            ))
        })
        .collect();
    PodEndpoint {
        name,
        uid,
        node: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        ready,
        terminating: pod.metadata.deletion_timestamp.is_some(),
        named_ports,
        addresses: found,
    }
}

fn our_slices(ns: &str, client: &kube::Client, name: &str) -> (Api<EndpointSlice>, ListParams) {
    (
        Api::namespaced(client.clone(), ns),
        ListParams::default().labels(&format!(
            "{SERVICE_LABEL}={name},{MANAGED_BY_LABEL}={MANAGED_BY}"
        )),
    )
}

/// Writes the slices that differ, deletes ours that are not wanted, writes the Endpoints.
async fn write(
    ctx: &Context,
    service: &Service,
    existing: &[EndpointSlice],
    wanted: &[danm_core::services::SliceSpec],
) -> Result<(), SvcError> {
    let ns = service.namespace().unwrap_or_default();
    let name = service.name_any();
    let api: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), &ns);
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    for spec in wanted {
        let slice = objects::slice(service, spec);
        let unchanged = existing.iter().any(|e| {
            e.metadata.name.as_deref() == Some(&spec.name) && objects::same_slice(e, &slice)
        });
        if unchanged {
            continue;
        }
        api.patch(&spec.name, &apply, &Patch::Apply(&slice))
            .await
            .map_err(fail(format!("apply EndpointSlice {ns}/{}", spec.name)))?;
        ctx.metrics.slices_written.inc();
    }
    for old in existing {
        let old_name = old.name_any();
        if !wanted.iter().any(|w| w.name == old_name) {
            delete(&api, &old_name).await?;
            ctx.metrics.slices_deleted.inc();
        }
    }
    let endpoints = objects::endpoints(service, wanted);
    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), &ns);
    let current = eps
        .get_opt(&name)
        .await
        .map_err(fail(format!("get Endpoints {ns}/{name}")))?;
    if current.as_ref().map(|c| &c.subsets) != Some(&endpoints.subsets)
        || current
            .as_ref()
            .and_then(|c| c.labels().get(objects::SKIP_MIRROR_LABEL).cloned())
            .as_deref()
            != Some("true")
    {
        eps.patch(&name, &apply, &Patch::Apply(&endpoints))
            .await
            .map_err(fail(format!("apply Endpoints {ns}/{name}")))?;
        ctx.metrics.endpoints_written.inc();
    }
    Ok(())
}

async fn delete<K>(api: &Api<K>, name: &str) -> Result<(), SvcError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(fail(format!("delete {name}"))(e)),
    }
}

/// Removes what svcwatcher wrote for a Service that is not (or no longer) DANM's.
async fn forget(ctx: &Context, ns: &str, name: &str) -> Result<(), SvcError> {
    let (api, select) = our_slices(ns, &ctx.client, name);
    for old in api
        .list(&select)
        .await
        .map_err(fail(format!("list EndpointSlices of {ns}/{name}")))?
        .items
    {
        delete(&api, &old.name_any()).await?;
        ctx.metrics.slices_deleted.inc();
    }
    let eps: Api<Endpoints> = Api::namespaced(ctx.client.clone(), ns);
    if let Some(current) = eps
        .get_opt(name)
        .await
        .map_err(fail(format!("get Endpoints {ns}/{name}")))?
        && current.labels().get(MANAGED_BY_LABEL).map(String::as_str) == Some(MANAGED_BY)
    {
        delete(&eps, name).await?;
    }
    Ok(())
}

fn error_policy(service: Arc<Service>, error: &SvcError, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconciled("error");
    tracing::warn!(service = %format!("{}/{}", service.namespace().unwrap_or_default(), service.name_any()), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_is_in_the_metrics_reference() {
        danm_testkit::metrics_doc::assert_documented(&Metrics::new().encode());
    }
}
