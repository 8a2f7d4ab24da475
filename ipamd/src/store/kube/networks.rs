//! The three network kinds on the API server, handled by one generic implementation:
//! [`kind`] is the only place that tells DanmNet, TenantNetwork and ClusterNetwork apart.

use std::collections::HashMap;
use std::marker::PhantomData;

use async_trait::async_trait;
use danm_core::{NetworkKey, NetworkKind};
use danm_crds::{
    ClusterNetwork, ClusterNetworkSpec, DanmNet, DanmNetSpec, NetworkSpec, TenantNetwork,
    TenantNetworkSpec,
};
use futures::StreamExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::broadcast;

use crate::store::{NetworkObject, StoreEvent};

/// A network kind as a Kubernetes resource.
pub(super) trait NetworkResource:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + serde::Serialize
    + Send
    + Sync
    + 'static
{
    /// Which kind.
    const KIND: NetworkKind;
    /// Its API for `namespace` (ignored by the cluster-scoped kind).
    fn api(client: Client, namespace: &str) -> Api<Self>;
    /// The network spec.
    fn network(&self) -> &NetworkSpec;
    /// A new object named `name` with `spec`.
    fn build(name: &str, spec: NetworkSpec) -> Self;
}

impl NetworkResource for DanmNet {
    const KIND: NetworkKind = NetworkKind::DanmNet;
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
    fn network(&self) -> &NetworkSpec {
        &self.spec.network
    }
    fn build(name: &str, network: NetworkSpec) -> Self {
        DanmNet::new(name, DanmNetSpec { network })
    }
}

impl NetworkResource for TenantNetwork {
    const KIND: NetworkKind = NetworkKind::TenantNetwork;
    fn api(client: Client, namespace: &str) -> Api<Self> {
        Api::namespaced(client, namespace)
    }
    fn network(&self) -> &NetworkSpec {
        &self.spec.network
    }
    fn build(name: &str, network: NetworkSpec) -> Self {
        TenantNetwork::new(name, TenantNetworkSpec { network })
    }
}

impl NetworkResource for ClusterNetwork {
    const KIND: NetworkKind = NetworkKind::ClusterNetwork;
    fn api(client: Client, _namespace: &str) -> Api<Self> {
        Api::all(client)
    }
    fn network(&self) -> &NetworkSpec {
        &self.spec.network
    }
    fn build(name: &str, network: NetworkSpec) -> Self {
        ClusterNetwork::new(name, ClusterNetworkSpec { network })
    }
}

/// What the store does with networks of one kind.
#[async_trait]
pub(super) trait NetworkKindApi: Send + Sync {
    /// One network.
    async fn get(&self, client: Client, key: &NetworkKey) -> kube::Result<Option<NetworkObject>>;
    /// Every network of the kind, or those of `namespace` (a ClusterNetwork has none: all).
    async fn list(
        &self,
        client: Client,
        namespace: Option<&str>,
    ) -> kube::Result<Vec<NetworkObject>>;
    /// Creates or replaces a network.
    async fn put(&self, client: Client, network: &NetworkObject) -> kube::Result<()>;
    /// Deletes a network; false when it did not exist.
    async fn delete(&self, client: Client, key: &NetworkKey) -> kube::Result<bool>;
    /// Follows the kind's changes into `events` until aborted; a failing watch is retried
    /// with kube-runtime's backoff (up to about 30 s apart), never in a busy loop.
    fn follow(
        &self,
        client: Client,
        events: broadcast::Sender<StoreEvent>,
    ) -> tokio::task::AbortHandle;
}

/// The generic implementation for kind `K`.
struct Kind<K>(PhantomData<fn() -> K>);

/// The store's API for networks of `kind`.
pub(super) fn kind(kind: NetworkKind) -> &'static dyn NetworkKindApi {
    match kind {
        NetworkKind::DanmNet => &Kind::<DanmNet>(PhantomData),
        NetworkKind::TenantNetwork => &Kind::<TenantNetwork>(PhantomData),
        NetworkKind::ClusterNetwork => &Kind::<ClusterNetwork>(PhantomData),
    }
}

fn object<K: NetworkResource>(o: &K) -> NetworkObject {
    NetworkObject {
        key: key_of(o),
        uid: o.uid().unwrap_or_default(),
        spec: o.network().clone(),
    }
}

fn key_of<K: NetworkResource>(o: &K) -> NetworkKey {
    let namespace = if K::KIND.namespaced() {
        o.namespace().unwrap_or_default()
    } else {
        String::new()
    };
    NetworkKey::new(K::KIND, &namespace, &o.name_any())
}

#[async_trait]
impl<K: NetworkResource> NetworkKindApi for Kind<K> {
    async fn get(&self, client: Client, key: &NetworkKey) -> kube::Result<Option<NetworkObject>> {
        Ok(K::api(client, &key.namespace)
            .get_opt(&key.name)
            .await?
            .map(|o| object(&o)))
    }

    async fn list(
        &self,
        client: Client,
        namespace: Option<&str>,
    ) -> kube::Result<Vec<NetworkObject>> {
        let api: Api<K> = match namespace {
            Some(ns) if K::KIND.namespaced() => K::api(client, ns),
            _ => Api::all(client),
        };
        Ok(api
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .map(object)
            .collect())
    }

    async fn put(&self, client: Client, network: &NetworkObject) -> kube::Result<()> {
        let key = &network.key;
        let api = K::api(client, &key.namespace);
        let mut wanted = K::build(&key.name, network.spec.clone());
        match api.get_opt(&key.name).await? {
            Some(current) => {
                wanted.meta_mut().resource_version = current.resource_version();
                api.replace(&key.name, &PostParams::default(), &wanted)
                    .await?;
            }
            None => {
                api.create(&PostParams::default(), &wanted).await?;
            }
        }
        Ok(())
    }

    async fn delete(&self, client: Client, key: &NetworkKey) -> kube::Result<bool> {
        match K::api(client, &key.namespace)
            .delete(&key.name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn follow(
        &self,
        client: Client,
        events: broadcast::Sender<StoreEvent>,
    ) -> tokio::task::AbortHandle {
        let api: Api<K> = Api::all(client);
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .default_backoff()
                .boxed();
            // The object (UID) and generation last announced per network: a write of the
            // status subresource (or of metadata) leaves both unchanged and is not
            // announced, so the engine does not read the network again for it. A network
            // deleted and created again has another UID, even when a relist hid the delete.
            let mut generations: HashMap<NetworkKey, (Option<String>, Option<i64>)> =
                HashMap::new();
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                        let key = key_of(&o);
                        let seen = (o.meta().uid.clone(), o.meta().generation);
                        let unknown = seen.1.is_none();
                        let before = generations.insert(key.clone(), seen.clone());
                        if unknown || before.as_ref() != Some(&seen) {
                            let _ = events.send(StoreEvent::Network(key));
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        let key = key_of(&o);
                        generations.remove(&key);
                        let _ = events.send(StoreEvent::Network(key));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(kind = %K::KIND, error = %e, "network watch failed, retrying");
                    }
                }
            }
        })
        .abort_handle()
    }
}
