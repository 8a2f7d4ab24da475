//! Freeing what a survey found, each finding re-checked from fresh reads right before it is
//! freed: the DanmEp, its pod, its node and its network are read again and judged again, and
//! only a finding that is still leaked is freed.
//!
//! A DanmEp is freed through ipamd's `Release` with its owner key (container id + interface
//! name): ipamd frees only the addresses that owner's fingerprint holds, so an address that
//! has meanwhile gone to a new owner (a StatefulSet pod re-created under the same name) stays
//! with it. An orphan address goes through ipamd's `ReclaimOrphan`, which re-checks it from
//! fresh reads and frees it only if its shard has not changed since. Only where ipamd has
//! nothing to free does the cleaner delete an object itself: the DanmEp of a network that is
//! gone (its shards went with it), and a shard left by a deleted network, each with a
//! precondition on the object it judged.

use std::fmt::Debug;

use danm_core::leak::{EndpointFacts, Reason, Verdict, judge_endpoint};
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{AllocationShard, ClusterNetwork, DanmEp, DanmNet, TenantNetwork};
use danm_proto::v1 as pb;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Preconditions};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;

use crate::{CleanerError, Finding, Outcome, Settled, Subject, calico, facts};
use danm_core::calico::PodOf;

/// Calico's handles of leaked sandboxes, by container id.
type CalicoHandles = std::collections::HashMap<String, Vec<String>>;

/// Frees findings: the API for fresh reads, ipamd for every release.
#[derive(Clone)]
pub struct Freer {
    /// The API.
    pub client: kube::Client,
    /// ipamd (with the cleaner's request id on every call).
    pub ipamd: danm_proto::client::Client,
    /// Re-check and report, free nothing.
    pub dry_run: bool,
    /// Free the addresses Calico's IPAM gave leaked DanmEps of networks delegated to
    /// Calico too ([`crate::calico`]).
    pub calico: bool,
}

impl std::fmt::Debug for Freer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freer")
            .field("dry_run", &self.dry_run)
            .field("calico", &self.calico)
            .finish_non_exhaustive()
    }
}

impl Freer {
    /// Settles every finding, `concurrency` at a time. Orphans of one shard go one after
    /// the other (each reclaim is conditional on the shard's version, so concurrent ones
    /// would only fence each other out); shards and DanmEps go in parallel.
    pub async fn settle(&self, findings: Vec<Finding>, concurrency: usize) -> Vec<Settled> {
        let concurrency = concurrency.max(1);
        // Calico's handles of the sandboxes found leaked, from one list.
        let calico = match self.calico_handles(&findings).await {
            Ok(handles) => Ok(handles),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list Calico's handles; their DanmEps are kept");
                Err(e.to_string())
            }
        };
        let calico = &calico;
        let mut by_shard: std::collections::BTreeMap<String, Vec<Finding>> = Default::default();
        let mut others = Vec::new();
        for f in findings {
            match &f.subject {
                Subject::Address { shard, .. } => {
                    by_shard.entry(shard.clone()).or_default().push(f)
                }
                _ => others.push(f),
            }
        }
        let mut settled: Vec<Settled> = futures::stream::iter(others)
            .map(|f| self.settle_logged(f, calico))
            .buffered(concurrency)
            .collect()
            .await;
        let orphans: Vec<Vec<Settled>> = futures::stream::iter(by_shard.into_values())
            .map(|group| async move {
                let mut done = Vec::with_capacity(group.len());
                for f in group {
                    done.push(self.settle_logged(f, calico).await);
                }
                done
            })
            .buffered(concurrency)
            .collect()
            .await;
        settled.extend(orphans.into_iter().flatten());
        settled
    }

    /// The handles of Calico's IPAM that the sandboxes of the leaked DanmEps of networks
    /// delegated to Calico hold, by container id (none without `--calico`).
    async fn calico_handles(&self, findings: &[Finding]) -> Result<CalicoHandles, CleanerError> {
        if !self.calico {
            return Ok(CalicoHandles::new());
        }
        let containers: std::collections::HashSet<String> = findings
            .iter()
            .filter_map(|f| match &f.subject {
                Subject::Endpoint(ep) if ep.network_type == calico::NETWORK_TYPE => {
                    Some(ep.container_id.clone())
                }
                _ => None,
            })
            .filter(|c| !c.is_empty())
            .collect();
        calico::handles_of(&self.client, &containers, crate::survey::DEFAULT_PAGE).await
    }

    async fn settle_logged(
        &self,
        finding: Finding,
        calico: &Result<CalicoHandles, String>,
    ) -> Settled {
        let (reason, outcome) = match self.settle_one(&finding, calico).await {
            Ok(done) => done,
            Err(e) => (finding.reason, Outcome::Failed(e.to_string())),
        };
        if let Outcome::Failed(why) = &outcome {
            tracing::warn!(subject = %finding.subject, %reason, error = %why, "could not free");
        } else {
            tracing::info!(subject = %finding.subject, %reason, outcome = %outcome, "settled");
        }
        Settled {
            finding: Finding { reason, ..finding },
            outcome,
        }
    }

    async fn settle_one(
        &self,
        f: &Finding,
        calico: &Result<CalicoHandles, String>,
    ) -> Result<(Reason, Outcome), CleanerError> {
        match &f.subject {
            Subject::Endpoint(ep) => self.endpoint(f.reason, ep, calico).await,
            Subject::Address {
                network,
                address,
                fingerprint,
                ..
            } => {
                if self.dry_run {
                    return Ok((f.reason, Outcome::WouldFree));
                }
                let answer = self
                    .ipamd
                    .clone()
                    .reclaim_orphan(pb::ReclaimOrphanRequest {
                        network: Some(pb::NetworkRef::from(network)),
                        address: address.to_string(),
                        fingerprint: format!("{fingerprint:016x}"),
                    })
                    .await
                    .map_err(|source| CleanerError::Ipamd {
                        what: format!("ReclaimOrphan {address} of {network}"),
                        source,
                    })?
                    .into_inner();
                Ok((
                    f.reason,
                    if answer.released.is_empty() {
                        Outcome::Kept("not an orphan any more (ipamd's re-check)".into())
                    } else {
                        Outcome::Freed(answer.released)
                    },
                ))
            }
            Subject::Shard {
                namespace,
                name,
                uid,
                network,
            } => self.shard(namespace, name, uid, network).await,
        }
    }

    /// Re-checks one DanmEp from fresh reads and frees it if it is still leaked.
    async fn endpoint(
        &self,
        found: Reason,
        ep: &EndpointFacts,
        calico: &Result<CalicoHandles, String>,
    ) -> Result<(Reason, Outcome), CleanerError> {
        let api = Api::<DanmEp>::namespaced(self.client.clone(), &ep.namespace);
        let Some(fresh) = get(&api, &ep.name).await? else {
            return Ok((found, Outcome::Gone));
        };
        let facts = facts::endpoint(&fresh);
        let pod = if facts.pod.is_empty() {
            None
        } else {
            get(
                &Api::<Pod>::namespaced(self.client.clone(), &facts.namespace),
                &facts.pod,
            )
            .await?
            .map(|p| facts::pod(&p))
        };
        let node = match &pod {
            Some(p) if !p.node.is_empty() => p.node.clone(),
            _ => facts.host.clone(),
        };
        let node_exists = node.is_empty()
            || get(&Api::<Node>::all(self.client.clone()), &node)
                .await?
                .is_some();
        let network_exists = match &facts.network {
            Some(key) => network_uid(&self.client, key).await?.is_some(),
            None => true,
        };
        let reason = match judge_endpoint(&facts, |_| network_exists, pod.as_ref(), |_| node_exists)
        {
            Verdict::Live => {
                return Ok((
                    found,
                    Outcome::Kept(
                        "in use on re-check (its pod, node and network are there)".into(),
                    ),
                ));
            }
            Verdict::Leaked(reason) => reason,
        };
        if self.dry_run {
            return Ok((reason, Outcome::WouldFree));
        }
        // Calico's addresses first: should that fail, the DanmEp stays for the next pass.
        let calico_freed = match self.free_calico(&facts, &ep.container_id, calico).await {
            Ok(freed) => freed,
            Err(e) => return Ok((reason, Outcome::Failed(e.to_string()))),
        };
        let precondition = DeleteParams {
            preconditions: Some(Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: fresh.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        if reason == Reason::NetworkGone {
            // The shards went with the network: there is nothing left to free but the record.
            return match api.delete(&ep.name, &precondition).await {
                Ok(_) => Ok((reason, Outcome::Freed(calico_freed))),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                    Ok((reason, gone_after(calico_freed)))
                }
                Err(source) => Err(CleanerError::Api {
                    what: format!("delete DanmEp {}/{}", ep.namespace, ep.name),
                    source,
                }),
            };
        }
        let (Some(network), Some(_)) = (&facts.network, facts.owner()) else {
            return Ok((
                reason,
                Outcome::Failed(
                    "no owner key (CID and Interface.Name) or no network: ipamd cannot release it"
                        .into(),
                ),
            ));
        };
        let answer = self
            .ipamd
            .clone()
            .release(pb::ReleaseRequest {
                network: Some(pb::NetworkRef::from(network)),
                owner: Some(pb::Owner {
                    container_id: facts.container_id.clone(),
                    ifname: facts.ifname.clone(),
                    pod_namespace: facts.namespace.clone(),
                    pod_name: facts.pod.clone(),
                    pod_uid: facts.pod_uid.clone(),
                    ..Default::default()
                }),
            })
            .await
            .map_err(|source| CleanerError::Ipamd {
                what: format!("Release of DanmEp {}/{}", ep.namespace, ep.name),
                source,
            })?
            .into_inner();
        // ipamd deletes the records it names after their owner key; a record named
        // otherwise (DANM's random names) is still there, its addresses freed: delete it.
        if let Some(left) = get(&api, &ep.name).await?
            && left.metadata.uid == fresh.metadata.uid
        {
            let unchanged = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: left.metadata.uid.clone(),
                    resource_version: left.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match api.delete(&ep.name, &unchanged).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {}
                Err(source) => {
                    return Err(CleanerError::Api {
                        what: format!("delete DanmEp {}/{}", ep.namespace, ep.name),
                        source,
                    });
                }
            }
        }
        let mut freed = answer.released;
        freed.extend(calico_freed);
        Ok((reason, Outcome::Freed(freed)))
    }

    /// Frees what Calico's IPAM gave the sandbox of a leaked DanmEp of a network delegated
    /// to Calico: the addresses freed, each marked `(Calico)`.
    async fn free_calico(
        &self,
        facts: &EndpointFacts,
        found_cid: &str,
        calico: &Result<CalicoHandles, String>,
    ) -> Result<Vec<String>, CleanerError> {
        if !self.calico || facts.network_type != calico::NETWORK_TYPE {
            return Ok(Vec::new());
        }
        let handles = calico
            .as_ref()
            .map_err(|e| CleanerError::Calico(e.clone()))?;
        // The handles were listed for the container id the survey read.
        if facts.container_id != found_cid {
            return Err(CleanerError::Calico(format!(
                "the DanmEp's container id changed since the survey ({found_cid} to {}): the next pass looks again",
                facts.container_id
            )));
        }
        let pod = PodOf {
            namespace: &facts.namespace,
            pod: &facts.pod,
        };
        let mut freed = Vec::new();
        for handle in handles.get(&facts.container_id).into_iter().flatten() {
            for address in calico::release(&self.client, handle, pod).await? {
                freed.push(format!("{address} (Calico)"));
            }
        }
        Ok(freed)
    }

    /// Deletes a shard of a network that is gone, if it still is.
    async fn shard(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        network: &NetworkKey,
    ) -> Result<(Reason, Outcome), CleanerError> {
        let reason = Reason::NetworkGone;
        let api = Api::<AllocationShard>::namespaced(self.client.clone(), namespace);
        let Some(fresh) = get(&api, name).await? else {
            return Ok((reason, Outcome::Gone));
        };
        if fresh.metadata.uid.as_deref() != Some(uid) {
            return Ok((reason, Outcome::Kept("re-created since".into())));
        }
        if network_uid(&self.client, network).await?.is_some() {
            return Ok((reason, Outcome::Kept("its network exists again".into())));
        }
        if self.dry_run {
            return Ok((reason, Outcome::WouldFree));
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: fresh.metadata.uid.clone(),
                resource_version: fresh.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(name, &params).await {
            Ok(_) => Ok((reason, Outcome::Freed(Vec::new()))),
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => {
                Ok((reason, Outcome::Gone))
            }
            Err(source) => Err(CleanerError::Api {
                what: format!("delete AllocationShard {namespace}/{name}"),
                source,
            }),
        }
    }
}

/// A DanmEp gone before its delete: `Gone`, unless Calico's addresses were freed for it.
fn gone_after(calico_freed: Vec<String>) -> Outcome {
    if calico_freed.is_empty() {
        Outcome::Gone
    } else {
        Outcome::Freed(calico_freed)
    }
}

/// The UID of a network, read afresh; `None` when it does not exist.
async fn network_uid(
    client: &kube::Client,
    key: &NetworkKey,
) -> Result<Option<String>, CleanerError> {
    async fn uid_of<K>(api: Api<K>, name: &str) -> Result<Option<String>, CleanerError>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    {
        Ok(get(&api, name).await?.map(|n| n.uid().unwrap_or_default()))
    }
    let c = client.clone();
    match key.kind {
        NetworkKind::DanmNet => {
            uid_of(Api::<DanmNet>::namespaced(c, &key.namespace), &key.name).await
        }
        NetworkKind::TenantNetwork => {
            uid_of(
                Api::<TenantNetwork>::namespaced(c, &key.namespace),
                &key.name,
            )
            .await
        }
        NetworkKind::ClusterNetwork => uid_of(Api::<ClusterNetwork>::all(c), &key.name).await,
    }
}

/// One object, or `None` when it does not exist.
async fn get<K>(api: &Api<K>, name: &str) -> Result<Option<K>, CleanerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.get_opt(name).await.map_err(|source| CleanerError::Api {
        what: format!("get {} {name}", K::kind(&())),
        source,
    })
}
