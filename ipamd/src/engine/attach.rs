//! A whole pod: Attach (resolve its interfaces, allocate every address, all or nothing),
//! Detach, Interfaces (what a container holds) and the CNI GC.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use danm_core::interfaces::{Connection, interface_name, parse_annotation};
use danm_core::network::DEFAULT_NETWORK_NAME;
use danm_core::owner::OwnerError;
use danm_core::{AddressRequest, NetworkKey, NetworkKind, NetworkPlan, OwnerKey};

use super::records::{check_requests, effective_requests};
use super::{AttachInput, Engine, OwnerInfo, PlannedInterface};
use crate::error::EngineError;
use crate::store::{EndpointRecord, StoreError};

impl Engine {
    /// Resolves a pod's interfaces, allocates every address and records every interface.
    /// All or nothing.
    pub async fn attach(&self, input: &AttachInput) -> Result<Vec<PlannedInterface>, EngineError> {
        let pod = &input.pod;
        if pod.container_id.is_empty() {
            return Err(OwnerError::Empty("container_id").into());
        }
        // With an API server, the pod's own annotation is the truth; without one, the
        // caller sends the interface list.
        let info = match self.store.pod(&pod.pod_namespace, &pod.pod_name).await {
            Ok(info) => info,
            Err(StoreError::NotFound(what)) => return Err(EngineError::PodNotFound(what)),
            Err(e) => return Err(e.into()),
        };
        if let Some(caller) = &input.required_node {
            let bound = info.as_ref().map(|i| i.node_name.as_str());
            if bound != Some(caller.as_str()) {
                return Err(EngineError::PodOnOtherNode {
                    pod: format!("{}/{}", pod.pod_namespace, pod.pod_name),
                    caller: caller.clone(),
                    bound: bound.map(str::to_owned),
                });
            }
        }
        let (interfaces, pod_uid) = match info {
            Some(info) => (info.interfaces.unwrap_or_default(), info.uid),
            None => (input.interfaces_json.clone(), pod.pod_uid.clone()),
        };
        let pod = &OwnerInfo {
            pod_uid: if pod_uid.is_empty() {
                pod.pod_uid.clone()
            } else {
                pod_uid
            },
            ..pod.clone()
        };
        let mut connections = parse_annotation(&interfaces, &pod.pod_namespace)?;
        let limit = self.config.max_interfaces_per_pod;
        if connections.len() > limit {
            return Err(EngineError::TooManyInterfaces {
                count: connections.len(),
                limit,
            });
        }
        if connections.is_empty() {
            connections.push(Connection {
                sequence: 0,
                network: self.default_network(&pod.pod_namespace)?,
                ip: AddressRequest::Dynamic,
                ip6: AddressRequest::Skip,
                proutes: Default::default(),
                proutes6: Default::default(),
            });
        }
        // Resolve and check everything before allocating anything.
        let mut planned = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut statics: HashMap<(NetworkKey, IpAddr), usize> = HashMap::new();
        for c in connections {
            let wrap = |e: EngineError| EngineError::Attach {
                index: c.sequence,
                network: c.network.to_string(),
                source: Box::new(e),
            };
            let (plan, worker) = self.serving(&c.network).map_err(wrap)?;
            if !plan.tenant_allowed(&pod.pod_namespace) {
                return Err(wrap(EngineError::TenantNotAllowed {
                    namespace: pod.pod_namespace.clone(),
                    network: plan.key.to_string(),
                }));
            }
            let ifname = interface_name(
                input.naming,
                plan.spec.options.container_prefix.as_deref(),
                c.sequence,
            );
            if let Some(&first) = names.get(&ifname) {
                return Err(EngineError::DuplicateInterface {
                    first,
                    second: c.sequence,
                    ifname,
                });
            }
            names.insert(ifname.clone(), c.sequence);
            let owner = OwnerKey::new(&pod.container_id, &ifname).map_err(|e| wrap(e.into()))?;
            let requests = effective_requests(&plan, &c);
            check_requests(&plan, &requests).map_err(wrap)?;
            for (_, request) in requests.iter() {
                if let AddressRequest::Static { ip, .. } = request {
                    if let Some(&first) = statics.get(&(plan.key.clone(), *ip)) {
                        return Err(EngineError::DuplicateAddress {
                            first,
                            second: c.sequence,
                            address: *ip,
                            network: plan.key.to_string(),
                        });
                    }
                    statics.insert((plan.key.clone(), *ip), c.sequence);
                }
            }
            planned.push((c, plan, worker, ifname, owner, requests));
        }
        let results = futures::future::join_all(planned.iter().map(
            |(_, plan, worker, ifname, owner, requests)| {
                let info = OwnerInfo {
                    ifname: ifname.clone(),
                    ..pod.clone()
                };
                async move {
                    self.allocate_checked(plan, worker, owner, &info, *requests)
                        .await
                }
            },
        ))
        .await;
        if let Some(index) = results.iter().position(Result::is_err) {
            // Only what this call recorded is rolled back: a record the owner already held
            // (a retried ADD) stays for the runtime's DEL.
            for ((_, plan, _, _, owner, _), result) in planned.iter().zip(&results) {
                if matches!(result, Ok((_, true)))
                    && let Err(e) = self
                        .release(&plan.key, owner, Some(&pod.pod_namespace))
                        .await
                {
                    tracing::error!(owner = %owner, error = %e, "rollback of attach failed");
                }
            }
            let (c, ..) = &planned[index];
            let error = results
                .into_iter()
                .nth(index)
                .expect("index in range")
                .expect_err("failed result");
            return Err(EngineError::Attach {
                index: c.sequence,
                network: c.network.to_string(),
                source: Box::new(error),
            });
        }
        Ok(planned
            .into_iter()
            .zip(results)
            .map(
                |((connection, network, _, ifname, ..), r)| PlannedInterface {
                    sequence: connection.sequence,
                    ifname,
                    network,
                    connection,
                    addresses: r.expect("all succeeded").0,
                },
            )
            .collect())
    }

    /// The namespace's `default` DanmNet or TenantNetwork, else the `default`
    /// ClusterNetwork.
    fn default_network(&self, namespace: &str) -> Result<NetworkKey, EngineError> {
        for kind in NetworkKind::ALL {
            let key = NetworkKey::new(kind, namespace, DEFAULT_NETWORK_NAME);
            match self.network(&key) {
                Ok(_) => return Ok(key),
                Err(EngineError::NetworkNotFound(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::NoDefaultNetwork(namespace.to_owned()))
    }

    /// The endpoint records of a container, with their networks' plans (None for a network
    /// that is not served), in interface-name order. `namespace` is the pod's, when known.
    pub async fn interfaces(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<(EndpointRecord, Option<Arc<NetworkPlan>>)>, EngineError> {
        if container_id.is_empty() {
            return Err(OwnerError::Empty("container_id").into());
        }
        let mut records: Vec<_> = self
            .store
            .endpoints_of_container(container_id, namespace)
            .await?
            .into_iter()
            .map(|r| {
                let plan = self.network(&r.network).ok();
                (r, plan)
            })
            .collect();
        records.sort_by(|a, b| a.0.owner.ifname.cmp(&b.0.owner.ifname));
        Ok(records)
    }

    /// Releases every interface of a container. `namespace` is the pod's, when known.
    pub async fn detach(
        &self,
        container_id: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        if container_id.is_empty() {
            return Err(OwnerError::Empty("container_id").into());
        }
        let mut freed = Vec::new();
        for record in self
            .store
            .summaries_of_container(container_id, namespace)
            .await?
        {
            freed.extend(
                self.release(record.network(), &record.owner(), Some(record.namespace()))
                    .await?,
            );
        }
        Ok(freed)
    }

    /// CNI GC: releases every owner (on `network`, if given; attached on `host`, if given)
    /// that is not in `valid`. Works
    /// from the store's (possibly cached) list of records; each release reads its record
    /// afresh.
    pub async fn gc(
        &self,
        valid: &HashSet<OwnerKey>,
        network: Option<&NetworkKey>,
        host: Option<&str>,
    ) -> Result<Vec<String>, EngineError> {
        let mut freed = Vec::new();
        for record in self.store.list_endpoints().await? {
            let owner = record.owner();
            if valid.contains(&owner)
                || network.is_some_and(|n| n != record.network())
                || host.is_some_and(|h| h != record.host())
            {
                continue;
            }
            freed.extend(
                self.release(record.network(), &owner, Some(record.namespace()))
                    .await?,
            );
        }
        Ok(freed)
    }
}
