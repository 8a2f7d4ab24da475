//! Freeing ids: a watch of TenantNetworks frees a deleted one's id at once; a
//! reconciliation, every `interval`, frees those no TenantNetwork carries past `grace`
//! (see the module overview of [`super`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use danm_core::admit::vni::{self, HeldVni, VNI_RESERVATION_ANNOTATION, VniType};
use danm_crds::{TenantConfig, TenantNetwork};
use kube::ResourceExt;
use kube::api::{Api, PostParams};
use tokio::sync::mpsc;

use super::calls::{CallError, backoff, bounded};
use super::{Gone, Tenants, TenantsError, same_object};
use crate::metrics::FreedLabels;

impl Tenants {
    pub(super) async fn reconcile_forever(
        self: Arc<Self>,
        mut gone_rx: mpsc::UnboundedReceiver<Gone>,
    ) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pending: Vec<Gone> = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                got = gone_rx.recv() => match got {
                    Some(g) => pending.push(g),
                    None => return,
                },
            }
            while let Ok(g) = gone_rx.try_recv() {
                pending.push(g);
            }
            match self.reconcile(&pending).await {
                Ok(()) => pending.clear(),
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling reservations failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Frees the ids of `gone` TenantNetworks, and those no TenantNetwork carries that are
    /// older than the grace period, in every TenantConfig.
    async fn reconcile(&self, gone: &[Gone]) -> Result<(), TenantsError> {
        // Until both watches have listed, "no TenantNetwork carries it" means nothing.
        if self.configs.wait_until_ready().await.is_err()
            || self.networks.wait_until_ready().await.is_err()
        {
            return Err(TenantsError::NotReady);
        }
        let tokens_gone: HashSet<&str> = gone.iter().filter_map(|g| g.token.as_deref()).collect();
        let api: Api<TenantConfig> = Api::all(self.client.clone());
        for name in self.configs.state().iter().map(|c| c.name_any()) {
            let mut done = false;
            for attempt in 0..self.config.attempts {
                let mut config = bounded(api.get(&name)).await.map_err(|e| e.of(&name))?;
                // Read after the TenantConfig: a TenantNetwork created since is carried.
                let carried = self.carried_tokens();
                let now = jiff::Timestamp::now();
                let grace = self.config.grace;
                // Expired and carried by no TenantNetwork the watch knows: confirmed with a
                // read of the API server, since the watch may lag behind.
                let mut abandoned = HashSet::new();
                for held in vni::reservations(&config) {
                    if !tokens_gone.contains(held.holder.token.as_str())
                        && !carried.contains(&held.holder.token)
                        && expired(&held, now, grace)
                        && !self.still_carried(&held).await?
                    {
                        abandoned.insert(held.holder.token);
                    }
                }
                let freed = vni::release_where(&mut config, |held| {
                    tokens_gone.contains(held.holder.token.as_str())
                        || abandoned.contains(&held.holder.token)
                });
                let mut legacy = 0;
                for (profile, vni_type, id) in gone.iter().filter_map(|g| g.legacy.as_ref()) {
                    match vni::release_legacy(&mut config, profile, *vni_type, *id) {
                        Ok(true) => legacy += 1,
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, tenant_config = %name, "cannot free a DANM-era id")
                        }
                    }
                }
                if freed.is_empty() && legacy == 0 {
                    done = true;
                    break;
                }
                match bounded(api.replace(&name, &PostParams::default(), &config)).await {
                    Ok(written) => {
                        for held in &freed {
                            let reason = if tokens_gone.contains(held.holder.token.as_str()) {
                                "deleted"
                            } else {
                                "expired"
                            };
                            self.metrics
                                .freed
                                .get_or_create(&FreedLabels { reason })
                                .inc();
                            tracing::info!(
                                network = %held.holder.network, profile = %held.profile,
                                id = %held.id, reason, tenant_config = %name, "freed an id"
                            );
                        }
                        self.metrics
                            .freed
                            .get_or_create(&FreedLabels { reason: "legacy" })
                            .inc_by(legacy);
                        // The recording side starts from the newer copy (held only here:
                        // reads of the API server above are made without it).
                        let mut latest = self.writer.lock().await;
                        if latest.as_ref().is_some_and(|c| {
                            same_object(c, &written)
                                && c.metadata.generation <= written.metadata.generation
                        }) {
                            *latest = Some(written);
                        }
                        done = true;
                        break;
                    }
                    Err(CallError::Conflict) => {
                        self.metrics.conflicts.inc();
                        backoff(attempt).await;
                    }
                    Err(e) => return Err(e.of(&name)),
                }
            }
            // Not dropped: the caller keeps what is gone and tries again.
            if !done {
                return Err(TenantsError::Busy(name));
            }
        }
        Ok(())
    }
}

impl Tenants {
    /// Whether a TenantNetwork carries the reservation's token, read from the API server:
    /// the named network, or (for a `generateName` create) any of its namespace.
    async fn still_carried(&self, held: &HeldVni) -> Result<bool, TenantsError> {
        let (namespace, name) = held
            .holder
            .network
            .split_once('/')
            .unwrap_or(("", held.holder.network.as_str()));
        let api: Api<TenantNetwork> = Api::namespaced(self.client.clone(), namespace);
        let carries = |tn: &TenantNetwork| {
            tn.annotations().get(VNI_RESERVATION_ANNOTATION) == Some(&held.holder.token)
        };
        let read = |e: CallError| TenantsError::Holder {
            network: held.holder.network.clone(),
            reason: e.to_string(),
        };
        if name.is_empty() {
            let list = bounded(api.list(&Default::default())).await.map_err(read)?;
            Ok(list.items.iter().any(carries))
        } else {
            Ok(bounded(api.get_opt(name))
                .await
                .map_err(read)?
                .is_some_and(|tn| carries(&tn)))
        }
    }
}

/// What a deleted TenantNetwork held: its token, or its DANM-era id.
pub(super) fn gone_of(tn: &TenantNetwork) -> Gone {
    let token = tn.annotations().get(VNI_RESERVATION_ANNOTATION).cloned();
    let opts = &tn.spec.network.options;
    let profile = opts
        .device_pool
        .clone()
        .filter(|p| !p.is_empty())
        .or_else(|| opts.host_device.clone());
    let id = match (opts.vxlan, opts.vlan) {
        (Some(id), _) => Some((VniType::Vxlan, id)),
        (None, Some(id)) => Some((VniType::Vlan, id)),
        _ => None,
    };
    let legacy = match (&token, profile, id) {
        (None, Some(profile), Some((t, id))) => u32::try_from(id).ok().map(|id| (profile, t, id)),
        _ => None,
    };
    Gone { token, legacy }
}

pub(super) fn expired(held: &HeldVni, now: jiff::Timestamp, grace: Duration) -> bool {
    match held.holder.since.parse::<jiff::Timestamp>() {
        Ok(since) => now.duration_since(since).unsigned_abs() >= grace && now > since,
        // An unreadable time cannot prove the reservation young.
        Err(_) => true,
    }
}
