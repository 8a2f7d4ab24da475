//! Releasing addresses Calico's IPAM gave, as pure functions over Calico's own objects
//! ([`danm_crds::foreign::calico`]): what danm-utils' cleaner did with `calicoctl ipam
//! release` for a dangling DanmEp of a network delegated to Calico.
//!
//! Calico's CNI plugin records every address it gives under a handle,
//! `<CNI network name>.<container id>`, and frees a sandbox's addresses by that handle. The
//! cleaner does the same for a sandbox that is gone: every allocation whose handle is
//! `<name>.<the DanmEp's CID>` ([`handle_of_container`]) and whose attributes, when they
//! name a pod, name the DanmEp's pod ([`release_handle`]). The block is changed as Calico's
//! own release changes it: the allocation cleared, its ordinal appended to `unallocated`,
//! its sequence-number entry dropped, an attribute no allocation uses any more removed (the
//! others renumbered, in order), and `sequenceNumber` bumped once per write; then the
//! handle's count for the block is what the block still holds for it ([`recount_handle`],
//! [`handle_counts`]). [`check_block`] holds the block invariants of Calico's block checker
//! (`validateBlock` of `calicoctl ipam check`), checked before and after.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use danm_crds::foreign::calico::{IPAMBlockSpec, IPAMHandleSpec};
use ipnet::IpNet;

/// The handle Calico gives addresses it reserves on Windows nodes: never a pod's.
pub const WINDOWS_RESERVED_HANDLE: &str = "windows-reserved-ipam-handle";

/// Why a Calico object cannot be worked on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CalicoError {
    /// `spec.cidr` is not a CIDR.
    #[error("IPAMBlock spec.cidr {0:?} is not a CIDR")]
    BadCidr(String),
    /// The block breaks Calico's invariants: nothing is changed in it.
    #[error("IPAMBlock {cidr} is inconsistent, left alone: {}", problems.join("; "))]
    Inconsistent {
        /// The block.
        cidr: String,
        /// What is wrong.
        problems: Vec<String>,
    },
}

/// Whether `handle_id` is the handle Calico's CNI plugin gives the sandbox `container_id`
/// (`<network name>.<container id>`, the network name being the CNI configuration's).
pub fn handle_of_container(handle_id: &str, container_id: &str) -> bool {
    !container_id.is_empty()
        && handle_id
            .strip_suffix(container_id)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|name| !name.is_empty())
}

/// The object name of an IPAMHandle: its id in lower case.
pub fn handle_name(handle_id: &str) -> String {
    handle_id.to_lowercase()
}

/// The object name of the IPAMBlock of `cidr`: the masked CIDR with `.`, `:` and `/` as `-`
/// (`10.0.0.0/26` is `10-0-0-0-26`, `fd00::/122` is `fd00---122`).
pub fn block_name(cidr: &str) -> Result<String, CalicoError> {
    let net: IpNet = cidr
        .parse()
        .map_err(|_| CalicoError::BadCidr(cidr.to_owned()))?;
    Ok(net.trunc().to_string().replace(['.', ':', '/'], "-"))
}

/// The pod an allocation must belong to: the DanmEp's namespace and pod.
#[derive(Clone, Copy, Debug)]
pub struct PodOf<'a> {
    /// Namespace.
    pub namespace: &'a str,
    /// Pod name.
    pub pod: &'a str,
}

/// What [`release_handle`] did to a block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// The addresses freed.
    pub addresses: Vec<IpAddr>,
    /// Addresses of the handle left alone: their attributes name another pod.
    pub foreign: Vec<IpAddr>,
}

/// Frees, in `block`, every allocation of `handle_id` whose attributes name `pod` or no pod
/// at all. The block must be consistent ([`check_block`]); it is left unchanged when nothing
/// is freed.
pub fn release_handle(
    block: &mut IPAMBlockSpec,
    handle_id: &str,
    pod: PodOf<'_>,
) -> Result<Released, CalicoError> {
    check_block(block)?;
    let base = base_of(block)?;
    let attribute_is_ours = |i: usize| {
        let a = &block.attributes[i];
        a.handle_id.as_deref().map(sanitize) == Some(handle_id)
    };
    let attribute_names_pod = |i: usize| {
        let s = block.attributes[i].secondary.as_ref();
        let named = |key: &str, want: &str| {
            s.and_then(|s| s.get(key))
                .is_none_or(|v| v.is_empty() || v == want)
        };
        named("namespace", pod.namespace) && named("pod", pod.pod)
    };
    let mut out = Released::default();
    let mut freed = BTreeSet::new();
    for (ordinal, slot) in block.allocations.iter().enumerate() {
        let Some(index) = slot.map(|i| i as usize) else {
            continue;
        };
        if !attribute_is_ours(index) {
            continue;
        }
        let address = address_at(base, ordinal);
        if attribute_names_pod(index) {
            freed.insert(ordinal);
            out.addresses.push(address);
        } else {
            out.foreign.push(address);
        }
    }
    if freed.is_empty() {
        return Ok(out);
    }
    // Attributes only freed allocations use go; the others keep their order.
    let mut still_used = vec![false; block.attributes.len()];
    for (ordinal, slot) in block.allocations.iter().enumerate() {
        if let Some(i) = slot
            && !freed.contains(&ordinal)
        {
            still_used[*i as usize] = true;
        }
    }
    let mut renumbered = vec![None; block.attributes.len()];
    let mut next = 0i64;
    for (i, used) in still_used.iter().enumerate() {
        if *used {
            renumbered[i] = Some(next);
            next += 1;
        }
    }
    let attributes = std::mem::take(&mut block.attributes);
    block.attributes = attributes
        .into_iter()
        .zip(&still_used)
        .filter_map(|(a, used)| used.then_some(a))
        .collect();
    for (ordinal, slot) in block.allocations.iter_mut().enumerate() {
        if freed.contains(&ordinal) {
            *slot = None;
        } else if let Some(i) = slot {
            *slot = renumbered[*i as usize];
        }
    }
    for ordinal in &freed {
        block.unallocated.push(*ordinal as i64);
        if let Some(seq) = block.sequence_number_for_allocation.as_mut() {
            seq.remove(&ordinal.to_string());
        }
    }
    block.sequence_number = block.sequence_number.wrapping_add(1);
    check_block(block)?;
    Ok(out)
}

/// Whether Calico deletes the block after a release: nothing but Windows' reserved
/// addresses left in it, and no node affinity.
pub fn block_is_empty(block: &IPAMBlockSpec) -> bool {
    block.affinity.is_none()
        && block.allocations.iter().flatten().all(|i| {
            block
                .attributes
                .get(*i as usize)
                .and_then(|a| a.handle_id.as_deref())
                == Some(WINDOWS_RESERVED_HANDLE)
        })
}

/// Sets `handle`'s count for the block `cidr` to `held`, the addresses the block holds for
/// it after a release (a release takes what it freed off the count; setting it to what the
/// block holds does the same, and also heals a count a failed write left behind).
/// `Ok(true)`: the handle holds nothing any more (Calico deletes it).
pub fn recount_handle(handle: &mut IPAMHandleSpec, cidr: &str, held: i64) -> bool {
    if held > 0 {
        handle.block.insert(cidr.to_owned(), held);
    } else {
        handle.block.remove(cidr);
    }
    handle.block.is_empty()
}

/// How many addresses of the block each handle holds (the counts an IPAMHandle must have).
pub fn handle_counts(block: &IPAMBlockSpec) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for i in block.allocations.iter().flatten() {
        if let Some(h) = block
            .attributes
            .get(*i as usize)
            .and_then(|a| a.handle_id.as_deref())
        {
            *counts.entry(sanitize(h).to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Calico's invariants of a block (its block checker, `validateBlock`): one entry per address; every
/// allocation points at an attribute; every attribute is used; `unallocated` holds
/// addresses of the block, each once, none of them allocated; and every address is either
/// allocated or unallocated.
pub fn check_block(block: &IPAMBlockSpec) -> Result<(), CalicoError> {
    let mut problems = Vec::new();
    match block.cidr.parse::<IpNet>() {
        Ok(net) => {
            let bits = net.max_prefix_len() - net.prefix_len();
            let size = if bits >= 32 {
                None
            } else {
                Some(1usize << bits)
            };
            if size != Some(block.allocations.len()) {
                problems.push(format!(
                    "{} allocations for a /{} block",
                    block.allocations.len(),
                    net.prefix_len()
                ));
            }
        }
        Err(_) => return Err(CalicoError::BadCidr(block.cidr.clone())),
    }
    let attributes = block.attributes.len() as i64;
    let mut used = vec![false; block.attributes.len()];
    let mut allocated = 0usize;
    for (ordinal, slot) in block.allocations.iter().enumerate() {
        let Some(i) = slot else { continue };
        allocated += 1;
        if !(0..attributes).contains(i) {
            problems.push(format!(
                "allocation {ordinal} points at attribute {i} of {attributes}"
            ));
        } else {
            used[*i as usize] = true;
        }
    }
    if let Some(unused) = used.iter().position(|u| !u) {
        problems.push(format!("attribute {unused} is used by no allocation"));
    }
    let mut seen = BTreeSet::new();
    for o in &block.unallocated {
        let slot = usize::try_from(*o)
            .ok()
            .and_then(|o| block.allocations.get(o));
        match slot {
            None => problems.push(format!("unallocated ordinal {o} is outside the block")),
            Some(Some(_)) => problems.push(format!("ordinal {o} is allocated and unallocated")),
            Some(None) => {}
        }
        if !seen.insert(*o) {
            problems.push(format!("ordinal {o} is unallocated twice"));
        }
    }
    if seen.len() + allocated != block.allocations.len() {
        problems.push(format!(
            "{} allocated and {} unallocated ordinals in a block of {}",
            allocated,
            seen.len(),
            block.allocations.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CalicoError::Inconsistent {
            cidr: block.cidr.clone(),
            problems,
        })
    }
}

/// A handle as Calico compares it: up to its first carriage return.
fn sanitize(handle: &str) -> &str {
    handle.split('\r').next().unwrap_or(handle)
}

fn base_of(block: &IPAMBlockSpec) -> Result<IpAddr, CalicoError> {
    block
        .cidr
        .parse::<IpNet>()
        .map(|n| n.network())
        .map_err(|_| CalicoError::BadCidr(block.cidr.clone()))
}

fn address_at(base: IpAddr, ordinal: usize) -> IpAddr {
    match base {
        IpAddr::V4(v4) => IpAddr::V4((u32::from(v4).wrapping_add(ordinal as u32)).into()),
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6).wrapping_add(ordinal as u128)).into()),
    }
}

#[cfg(test)]
mod tests;
