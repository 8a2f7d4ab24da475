//! The `danm.ipam.v1.Ipam` gRPC service: request decoding, authorization, engine calls.
//! Conversions to and from the wire and the status codes are in [`crate::wire`].

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;

use danm_core::interfaces::NamingScheme;
use danm_core::{NetworkKey, OwnerKey};
use danm_proto::v1 as pb;
use danm_proto::v1::ipam_server::Ipam;
use futures::Stream;
use tonic::{Request, Response, Status};

use crate::authz::{self, Policy};
use crate::engine::{AttachInput, Engine, EngineError, Metrics, OwnerInfo};
use crate::store::EndpointRecord;
use crate::wire::{invalid, network_info, network_key, status};

/// The gRPC service over an engine.
#[derive(Debug, Clone)]
pub struct IpamService {
    engine: Arc<Engine>,
    policy: Policy,
}

impl IpamService {
    /// Wraps an engine; every caller may call everything.
    pub fn new(engine: Arc<Engine>) -> IpamService {
        IpamService::with_policy(engine, Policy::Open)
    }

    /// Wraps an engine; callers are authorized by `policy`.
    pub fn with_policy(engine: Arc<Engine>, policy: Policy) -> IpamService {
        IpamService { engine, policy }
    }
}

/// Refuses a pod field with whitespace around it.
fn exact(field: &str, text: &str) -> Result<(), Status> {
    danm_core::input::exact(text).map_err(|e| invalid(field, &e.to_string()))
}

fn owner_info(o: Option<&pb::Owner>) -> Result<OwnerInfo, Status> {
    let o = o.ok_or_else(|| invalid("owner", "is required"))?;
    exact("owner.pod_namespace", &o.pod_namespace)?;
    exact("owner.pod_name", &o.pod_name)?;
    Ok(OwnerInfo {
        container_id: o.container_id.clone(),
        ifname: o.ifname.clone(),
        pod_namespace: o.pod_namespace.clone(),
        pod_name: o.pod_name.clone(),
        pod_uid: o.pod_uid.clone(),
        netns: o.netns.clone(),
        host: o.host.clone(),
    })
}

fn owner_key(o: Option<&pb::Owner>) -> Result<OwnerKey, Status> {
    let o = o.ok_or_else(|| invalid("owner", "is required"))?;
    OwnerKey::new(&o.container_id, &o.ifname).map_err(|e| Status::invalid_argument(e.to_string()))
}

/// What an interface plan says of its network; `recorded_type` when the network is gone.
fn network_part(
    ifname: &str,
    key: &NetworkKey,
    plan: Option<&danm_core::NetworkPlan>,
    recorded_type: &str,
) -> pb::InterfacePlan {
    let Some(plan) = plan else {
        return pb::InterfacePlan {
            ifname: ifname.to_owned(),
            network: Some(pb::NetworkRef::from(key)),
            network_type: recorded_type.to_owned(),
            ..Default::default()
        };
    };
    let o = &plan.spec.options;
    pb::InterfacePlan {
        ifname: ifname.to_owned(),
        network: Some(pb::NetworkRef::from(key)),
        network_type: plan.network_type().to_owned(),
        network_id: plan.spec.network_id.clone(),
        host_device: o.host_device.clone().unwrap_or_default(),
        device_pool: o.device_pool.clone().unwrap_or_default(),
        vlan: o.vlan.unwrap_or(0) as u32,
        vxlan: o.vxlan.unwrap_or(0) as u32,
        routes: routes(o.routes.as_ref()),
        routes6: routes(o.routes6.as_ref()),
        rt_tables: o.rt_tables.unwrap_or(0) as u32,
        ..Default::default()
    }
}

fn routes(map: Option<&std::collections::BTreeMap<String, String>>) -> Vec<pb::Route> {
    map.into_iter()
        .flatten()
        .map(|(d, g)| pb::Route {
            destination: d.clone(),
            gateway: g.clone(),
        })
        .collect()
}

fn fail(e: EngineError) -> Status {
    let s = status(&e);
    // What an operator must see (a full pool, a refused network) at info; the rest, which
    // any caller can cause at will (a malformed request, an unknown network), at debug.
    match s.code() {
        tonic::Code::ResourceExhausted | tonic::Code::FailedPrecondition => {
            tracing::info!(code = ?s.code(), message = s.message(), "request refused")
        }
        _ => tracing::debug!(code = ?s.code(), message = s.message(), "request refused"),
    }
    s
}

type AllocationStream = Pin<Box<dyn Stream<Item = Result<pb::Allocation, Status>> + Send>>;

#[tonic::async_trait]
impl Ipam for IpamService {
    async fn attach(
        &self,
        request: Request<pb::AttachRequest>,
    ) -> Result<Response<pb::AttachResponse>, Status> {
        let caller = self.policy.caller(&request).await?;
        let r = request.into_inner();
        if r.pod_namespace.is_empty() {
            return Err(invalid("pod_namespace", "must not be empty"));
        }
        exact("pod_namespace", &r.pod_namespace)?;
        exact("pod_name", &r.pod_name)?;
        let input = AttachInput {
            pod: OwnerInfo {
                container_id: r.container_id,
                ifname: String::new(),
                pod_namespace: r.pod_namespace,
                pod_name: r.pod_name,
                pod_uid: r.pod_uid,
                netns: r.netns,
                host: caller.node().map_or(r.host, str::to_owned),
            },
            interfaces_json: r.interfaces_json,
            naming: NamingScheme::parse(&r.naming_scheme),
            required_node: caller.node().map(str::to_owned),
        };
        let planned = self.engine.attach(&input).await.map_err(fail)?;
        let interfaces = planned
            .into_iter()
            .map(|p| pb::InterfacePlan {
                ip: p.addresses.ip,
                ip6: p.addresses.ip6,
                proutes: routes(Some(&p.connection.proutes)),
                proutes6: routes(Some(&p.connection.proutes6)),
                sequence: p.sequence as u32,
                ..network_part(&p.ifname, &p.network.key, Some(&p.network), "")
            })
            .collect();
        Ok(Response::new(pb::AttachResponse { interfaces }))
    }

    async fn interfaces(
        &self,
        request: Request<pb::InterfacesRequest>,
    ) -> Result<Response<pb::AttachResponse>, Status> {
        let caller = self.policy.caller(&request).await?;
        let r = request.into_inner();
        let namespace = Some(r.pod_namespace.as_str()).filter(|n| !n.is_empty());
        let records = self
            .engine
            .interfaces(&r.container_id, namespace)
            .await
            .map_err(fail)?;
        let held: Vec<&EndpointRecord> = records.iter().map(|(r, _)| r).collect();
        authz::confine(self.engine.store().as_ref(), &caller, "Interfaces", &held).await?;
        let interfaces = records
            .into_iter()
            .enumerate()
            .map(|(i, (record, plan))| {
                let iface = &record.spec.interface;
                pb::InterfacePlan {
                    ip: iface.address.clone(),
                    ip6: iface.address_ipv6.clone(),
                    proutes: routes(Some(&iface.proutes)),
                    proutes6: routes(Some(&iface.proutes6)),
                    sequence: i as u32,
                    ..network_part(
                        &record.owner.ifname,
                        &record.network,
                        plan.as_deref(),
                        &record.spec.network_type,
                    )
                }
            })
            .collect();
        Ok(Response::new(pb::AttachResponse { interfaces }))
    }

    async fn detach(
        &self,
        request: Request<pb::DetachRequest>,
    ) -> Result<Response<pb::DetachResponse>, Status> {
        let caller = self.policy.caller(&request).await?;
        let r = request.into_inner();
        let namespace = Some(r.pod_namespace.as_str()).filter(|n| !n.is_empty());
        if let Some(node) = caller.node() {
            // Only the records attached elsewhere need their pod's name and UID checked.
            let store = self.engine.store();
            let mut elsewhere = Vec::new();
            for summary in store
                .summaries_of_container(&r.container_id, namespace)
                .await
                .map_err(|e| fail(e.into()))?
                .into_iter()
                .filter(|s| s.host() != node)
            {
                if let Some(record) = store
                    .get_endpoint(&summary.owner(), Some(summary.namespace()))
                    .await
                    .map_err(|e| fail(e.into()))?
                {
                    elsewhere.push(record);
                }
            }
            let held: Vec<&EndpointRecord> = elsewhere.iter().collect();
            authz::confine(store.as_ref(), &caller, "Detach", &held).await?;
        }
        let released = self
            .engine
            .detach(&r.container_id, namespace)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::DetachResponse { released }))
    }

    async fn allocate(
        &self,
        request: Request<pb::AllocateRequest>,
    ) -> Result<Response<pb::AllocateResponse>, Status> {
        let caller = self.policy.caller(&request).await?;
        let r = request.into_inner();
        let network = network_key(r.network.as_ref(), "network")?;
        let mut owner = owner_info(r.owner.as_ref())?;
        if let Some(node) = caller.node() {
            authz::pod_on_node(self.engine.store().as_ref(), &owner, node).await?;
            owner.host = node.to_owned();
        }
        let addresses = self
            .engine
            .allocate(&network, &owner, &r.ip, &r.ip6)
            .await
            .map_err(fail)?;
        let plan = self.engine.network(&network).map_err(fail)?;
        Ok(Response::new(pb::AllocateResponse {
            ip: addresses.ip,
            ip6: addresses.ip6,
            routes: routes(plan.spec.options.routes.as_ref()),
            routes6: routes(plan.spec.options.routes6.as_ref()),
        }))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let caller = self.policy.caller(&request).await?;
        let r = request.into_inner();
        let network = network_key(r.network.as_ref(), "network")?;
        let owner = owner_key(r.owner.as_ref())?;
        self.engine.network(&network).map_err(fail)?;
        if caller.node().is_some() {
            let record = self
                .engine
                .store()
                .get_endpoint(&owner, pod_namespace(r.owner.as_ref()))
                .await
                .map_err(|e| fail(e.into()))?;
            // Nothing recorded: nothing this node may free (an address left without a
            // record by a crash is the orphan reclaimer's).
            let Some(record) = record else {
                return Ok(Response::new(pb::ReleaseResponse::default()));
            };
            authz::confine(self.engine.store().as_ref(), &caller, "Release", &[&record]).await?;
        }
        let released = self
            .engine
            .release(&network, &owner, pod_namespace(r.owner.as_ref()))
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ReleaseResponse { released }))
    }

    async fn reclaim_orphan(
        &self,
        request: Request<pb::ReclaimOrphanRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        self.policy
            .caller(&request)
            .await?
            .require_admin("ReclaimOrphan")?;
        let r = request.into_inner();
        let network = network_key(r.network.as_ref(), "network")?;
        let address: std::net::IpAddr = r
            .address
            .parse()
            .map_err(|_| invalid("address", "must be an IPv4 or IPv6 address without prefix"))?;
        let fingerprint = (r.fingerprint.len() == 16)
            .then(|| u64::from_str_radix(&r.fingerprint, 16).ok())
            .flatten()
            .ok_or_else(|| invalid("fingerprint", "must be 16 hex digits"))?;
        let freed = self
            .engine
            .reclaim_orphan(&network, address, fingerprint)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ReleaseResponse {
            released: freed.into_iter().collect(),
        }))
    }

    async fn check(
        &self,
        request: Request<pb::CheckRequest>,
    ) -> Result<Response<pb::CheckResponse>, Status> {
        self.policy.caller(&request).await?;
        let r = request.into_inner();
        let network = network_key(r.network.as_ref(), "network")?;
        let owner = owner_key(r.owner.as_ref())?;
        let a = self
            .engine
            .check(
                &network,
                &owner,
                pod_namespace(r.owner.as_ref()),
                &r.ip,
                &r.ip6,
            )
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::CheckResponse {
            ip: a.ip,
            ip6: a.ip6,
        }))
    }

    async fn gc(
        &self,
        request: Request<pb::GcRequest>,
    ) -> Result<Response<pb::GcResponse>, Status> {
        let caller = self.policy.caller(&request).await?;
        let r = request.into_inner();
        let network = match r.network.as_ref() {
            Some(n) => Some(network_key(Some(n), "network")?),
            None => None,
        };
        let mut valid = HashSet::new();
        for (i, a) in r.valid.iter().enumerate() {
            valid.insert(
                OwnerKey::new(&a.container_id, &a.ifname)
                    .map_err(|e| Status::invalid_argument(format!("valid[{i}]: {e}")))?,
            );
        }
        // A runtime's GC lists one node's attachments: only that node's are candidates.
        let host = match caller.node() {
            Some(node) => Some(node),
            None if !r.host.is_empty() => Some(r.host.as_str()),
            None if caller.is_admin() => None,
            None => {
                return Err(invalid(
                    "host",
                    "is required: a CNI GC covers one node's attachments",
                ));
            }
        };
        let released = self
            .engine
            .gc(&valid, network.as_ref(), host)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::GcResponse { released }))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        self.policy.caller(&request).await?;
        let ready = match self.engine.ready().await {
            Ok(()) => true,
            Err(why) => {
                tracing::info!(%why, "not ready");
                false
            }
        };
        Ok(Response::new(pb::StatusResponse {
            ready,
            store: self.engine.store().describe(),
            networks: self.engine.networks().len() as u32,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            counters: Some(counters(&self.engine.metrics)),
        }))
    }

    async fn get_network(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        self.policy.caller(&request).await?;
        let network = network_key(request.get_ref().network.as_ref(), "network")?;
        let plan = self.engine.network(&network).map_err(fail)?;
        let listed = self
            .engine
            .list_allocations(Some(&network))
            .await
            .map_err(fail)?;
        let sizes = self.engine.shard_sizes(&network).await.map_err(fail)?;
        let allocated = |family| {
            listed
                .iter()
                .filter(|l| danm_core::Family::of(&l.address) == family)
                .count() as u64
        };
        Ok(Response::new(network_info(&plan, allocated, &sizes)))
    }

    type ListAllocationsStream = AllocationStream;

    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<Self::ListAllocationsStream>, Status> {
        self.policy
            .caller(&request)
            .await?
            .require_admin("ListAllocations")?;
        let network = match request.get_ref().network.as_ref() {
            Some(n) => Some(network_key(Some(n), "network")?),
            None => None,
        };
        let listed = self
            .engine
            .list_allocations(network.as_ref())
            .await
            .map_err(fail)?;
        // The pods' names, UIDs and netns are not kept in memory: read the records once,
        // keeping of each only those and the addresses it names.
        let mut details: HashMap<(String, OwnerKey), Vec<PodDetails>> = HashMap::new();
        for record in self
            .engine
            .store()
            .read_endpoints(network.as_ref())
            .await
            .map_err(|e| fail(e.into()))?
        {
            details
                .entry((record.namespace.clone(), record.owner.clone()))
                .or_default()
                .push(PodDetails {
                    addresses: record.addresses().collect(),
                    pod: record.spec.pod,
                    pod_uid: record.spec.pod_uid,
                    netns: record.spec.netns,
                });
        }
        let items = listed.into_iter().map(move |l| {
            let owner = l.endpoint.map(|e| {
                let key = e.owner();
                // The record that names this address (an owner may have two DanmEps, one
                // named as DANM names them and one as ipamd does).
                let read = details
                    .get(&(e.namespace().to_owned(), key.clone()))
                    .and_then(|all| all.iter().find(|d| d.addresses.contains(&l.address)));
                let read = read.cloned().unwrap_or_default();
                pb::Owner {
                    container_id: key.container_id,
                    ifname: key.ifname,
                    pod_namespace: e.namespace().to_owned(),
                    pod_name: read.pod,
                    pod_uid: read.pod_uid,
                    netns: read.netns,
                    host: e.host().to_owned(),
                }
            });
            Ok(pb::Allocation {
                network: Some(pb::NetworkRef::from(&l.network)),
                address: l.address.to_string(),
                owner,
                fingerprint: format!("{:016x}", l.fingerprint),
            })
        });
        Ok(Response::new(Box::pin(futures::stream::iter(items))))
    }
}

/// The engine's counters as the Status RPC reports them.
fn counters(metrics: &Metrics) -> pb::Counters {
    let get = |c: &prometheus_client::metrics::counter::Counter| c.get();
    pb::Counters {
        allocations: get(&metrics.allocations),
        rounds: get(&metrics.rounds),
        shard_writes: get(&metrics.shard_writes),
        shard_conflicts: get(&metrics.conflicts),
        retries: get(&metrics.retries),
        corrupt_shards: get(&metrics.corrupt_shards),
        orphans_reclaimed: get(&metrics.orphans_reclaimed),
    }
}

/// The pod namespace a request's owner names, if any.
fn pod_namespace(owner: Option<&pb::Owner>) -> Option<&str> {
    owner
        .map(|o| o.pod_namespace.as_str())
        .filter(|n| !n.is_empty())
}

/// What ListAllocations shows of a DanmEp beyond ipamd's cache.
#[derive(Clone, Debug, Default)]
struct PodDetails {
    addresses: Vec<std::net::IpAddr>,
    pod: String,
    pod_uid: String,
    netns: String,
}
