//! Calico's addresses of dangling DanmEps (`--calico`), freed in Calico's Kubernetes
//! datastore as danm-utils' cleaner freed them with `calicoctl ipam release`.
//!
//! A DanmEp of a network delegated to Calico (`NetworkType: calico`) records the sandbox's
//! container id; Calico's CNI plugin recorded the addresses it gave that sandbox under the
//! handle `<CNI network name>.<container id>`. Once the DanmEp is judged leaked again from
//! fresh reads ([`crate::free`]), every such handle is released the way Calico's own
//! release by handle does it ([`danm_core::calico`]): each block the handle counts is read,
//! changed and written back on the condition that it is the block read (its
//! `resourceVersion`; on a conflict it is read again), then the handle's count for the
//! block is set to what the block still holds for it, and an emptied block without
//! affinity, or an emptied handle, is deleted in Calico's two steps (`deleted: true`, then
//! a delete on the UID and version). An object found marked `deleted` has its delete
//! finished. An allocation whose attributes name another pod is left alone and logged; a
//! block that breaks Calico's invariants is never written. This runs before ipamd's
//! release, so a failure leaves the DanmEp for the next pass, which converges: a block
//! already released holds nothing of the handle any more, and the handle is recounted.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use danm_core::calico::{
    PodOf, block_is_empty, block_name, handle_counts, handle_name, handle_of_container,
    recount_handle, release_handle,
};
use danm_crds::foreign::calico::{IPAMBlock, IPAMHandle};
use kube::Resource;
use kube::api::{Api, DeleteParams, ListParams, PostParams, Preconditions};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CleanerError;

/// The DanmEp network type whose addresses Calico's IPAM gave.
pub const NETWORK_TYPE: &str = "calico";

/// Writes of one object tried before giving up (each conflict re-reads it).
const ATTEMPTS: usize = 5;

/// The handles of the sandboxes `containers`, by container id, from one paginated list of
/// the IPAMHandles (only the matching ones are kept).
pub async fn handles_of(
    client: &kube::Client,
    containers: &HashSet<String>,
    page: u32,
) -> Result<HashMap<String, Vec<String>>, CleanerError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    if containers.is_empty() {
        return Ok(out);
    }
    let api = Api::<IPAMHandle>::all(client.clone());
    let mut params = ListParams::default().limit(page);
    loop {
        let list = api
            .list(&params)
            .await
            .map_err(|source| CleanerError::Api {
                what: "list Calico's IPAMHandles".into(),
                source,
            })?;
        for h in list.items.iter().filter(|h| !h.spec.deleted) {
            let id = &h.spec.handle_id;
            // The container id is what follows the handle's first '.' or a later one.
            for (at, _) in id.match_indices('.') {
                let cid = &id[at + 1..];
                if containers.contains(cid) && handle_of_container(id, cid) {
                    out.entry(cid.to_owned()).or_default().push(id.clone());
                }
            }
        }
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Frees what `handle_id` holds for `pod`: the addresses freed.
pub async fn release(
    client: &kube::Client,
    handle_id: &str,
    pod: PodOf<'_>,
) -> Result<Vec<IpAddr>, CleanerError> {
    let handles = Api::<IPAMHandle>::all(client.clone());
    let blocks = Api::<IPAMBlock>::all(client.clone());
    let handle_object = handle_name(handle_id);
    let Some(handle) = live(&handles, &handle_object).await? else {
        return Ok(Vec::new());
    };
    let mut freed = Vec::new();
    for cidr in handle.spec.block.keys() {
        let name = block_name(cidr).map_err(|e| failed(&handle_object, e))?;
        let (released, held) = release_in_block(&blocks, &name, handle_id, pod).await?;
        recount(&handles, &handle_object, cidr, held).await?;
        freed.extend(released);
    }
    Ok(freed)
}

/// Frees `handle_id`'s allocations for `pod` in the block `name`, retrying on conflicts:
/// the addresses freed, and how many the block still holds for the handle.
async fn release_in_block(
    blocks: &Api<IPAMBlock>,
    name: &str,
    handle_id: &str,
    pod: PodOf<'_>,
) -> Result<(Vec<IpAddr>, i64), CleanerError> {
    for _ in 0..ATTEMPTS {
        let Some(mut block) = live(blocks, name).await? else {
            return Ok((Vec::new(), 0));
        };
        let released = release_handle(&mut block.spec, handle_id, pod)
            .map_err(|e| failed(&format!("IPAMBlock {name}"), e))?;
        for address in &released.foreign {
            tracing::warn!(block = name, handle = handle_id, %address, pod = pod.pod, namespace = pod.namespace,
                "an address of this sandbox's handle is recorded for another pod: left alone");
        }
        let held = handle_counts(&block.spec)
            .get(handle_id)
            .copied()
            .unwrap_or(0);
        if released.addresses.is_empty() {
            return Ok((Vec::new(), held));
        }
        let written = if block_is_empty(&block.spec) {
            block.spec.deleted = true;
            delete_in_two_steps(blocks, name, block).await
        } else {
            replace(blocks, name, &block).await.map(|_| ())
        };
        match written {
            Ok(()) => return Ok((released.addresses, held)),
            Err(Conflict::Again) => continue,
            Err(Conflict::Failed(e)) => return Err(e),
        }
    }
    Err(busy("IPAMBlock", name))
}

/// Sets the handle's count for `cidr` to `held` (what the block holds for it), retrying on
/// conflicts; an emptied handle is deleted.
async fn recount(
    handles: &Api<IPAMHandle>,
    name: &str,
    cidr: &str,
    held: i64,
) -> Result<(), CleanerError> {
    for _ in 0..ATTEMPTS {
        let Some(mut handle) = live(handles, name).await? else {
            return Ok(());
        };
        if handle.spec.block.get(cidr).copied().unwrap_or(0) == held {
            return Ok(());
        }
        let written = if recount_handle(&mut handle.spec, cidr, held) {
            handle.spec.deleted = true;
            delete_in_two_steps(handles, name, handle).await
        } else {
            replace(handles, name, &handle).await.map(|_| ())
        };
        match written {
            Ok(()) => return Ok(()),
            Err(Conflict::Again) => continue,
            Err(Conflict::Failed(e)) => return Err(e),
        }
    }
    Err(busy("IPAMHandle", name))
}

/// An object of Calico's, unless it is absent or marked deleted (Calico reads such an
/// object as absent).
async fn live<K>(api: &Api<K>, name: &str) -> Result<Option<K>, CleanerError>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Deleted,
{
    let got = api
        .get_opt(name)
        .await
        .map_err(|source| CleanerError::Api {
            what: format!("get {} {name}", K::kind(&())),
            source,
        })?;
    Ok(got.filter(|o| !o.deleted()))
}

/// Whether one of Calico's objects is marked deleted.
trait Deleted {
    fn deleted(&self) -> bool;
}

impl Deleted for IPAMBlock {
    fn deleted(&self) -> bool {
        self.spec.deleted
    }
}

impl Deleted for IPAMHandle {
    fn deleted(&self) -> bool {
        self.spec.deleted
    }
}

/// Why a write did not land.
enum Conflict {
    /// The object changed since it was read: read it again.
    Again,
    /// Any other failure.
    Failed(CleanerError),
}

/// Replaces the object on the condition that it is the one read (its resourceVersion).
async fn replace<K>(api: &Api<K>, name: &str, object: &K) -> Result<K, Conflict>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    match api.replace(name, &PostParams::default(), object).await {
        Ok(o) => Ok(o),
        Err(kube::Error::Api(s)) if s.code == 409 => Err(Conflict::Again),
        Err(source) => Err(Conflict::Failed(CleanerError::Api {
            what: format!("replace {} {name}", K::kind(&())),
            source,
        })),
    }
}

/// Calico's delete: the object written with `deleted: true` (conditional on the version
/// read), then deleted on its UID.
async fn delete_in_two_steps<K>(api: &Api<K>, name: &str, marked: K) -> Result<(), Conflict>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let written = replace(api, name, &marked).await?;
    finish_delete(api, name, &written).await
}

/// Deletes an object marked deleted, on its UID and version.
async fn finish_delete<K>(api: &Api<K>, name: &str, marked: &K) -> Result<(), Conflict>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: marked.meta().uid.clone(),
            resource_version: marked.meta().resource_version.clone(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        // Gone already, or re-created: the marked object is gone either way.
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(source) => Err(Conflict::Failed(CleanerError::Api {
            what: format!("delete {} {name}", K::kind(&())),
            source,
        })),
    }
}

fn failed(what: &str, e: danm_core::calico::CalicoError) -> CleanerError {
    CleanerError::Calico(format!("{what}: {e}"))
}

fn busy(kind: &str, name: &str) -> CleanerError {
    CleanerError::Calico(format!(
        "{kind} {name} changed at each of {ATTEMPTS} attempts; the next pass tries again"
    ))
}
