//! Planning a round: each pending request's tentative changes on working copies of the
//! cached shards (picking addresses, freeing them, touching a shard).

use std::collections::BTreeMap;

use danm_core::codec::BitsError;
use danm_core::layout::{local_offset, shard_index};
use danm_core::policy::{ShardView, check_static, describe_pool, find_free};
use danm_core::{AddressRequest, AllocError, Family, ShardBits};

use super::pending::{Change, Op, Pending, PendingKind};
use super::state::{Cached, Worker};
use crate::error::EngineError;

/// The working copies of one round, by (family, shard index).
pub(super) type Work = BTreeMap<(Family, u128), ShardBits>;

/// What the search found for one family of an Allocate.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pick {
    /// A new tentative allocation.
    New(u128),
    /// The owner already holds this static address.
    Already(u128),
    /// The shard's state is unknown: try again next round.
    Deferred,
}

impl Worker {
    /// Plans one request on the working copies, adding its changes to `ops`.
    pub(super) fn plan_one(
        &mut self,
        index: usize,
        p: &mut Pending,
        work: &mut Work,
        ops: &mut Vec<Op>,
    ) {
        let fingerprint = p.fingerprint;
        // Frees the owner cannot be asked to write (it does not hold the address): settled
        // as done once planning is over.
        let mut nothing_to_write: Vec<Op> = Vec::new();
        let mut remove =
            |this: &mut Self, family: Family, offset: u128, work: &mut Work, ops: &mut Vec<Op>| {
                match this.plan_remove(index, fingerprint, family, offset, work) {
                    Some(op) => ops.push(op),
                    // Unknown state: try again next round.
                    None if this.stale.contains(&(family, shard_index(offset))) => {}
                    None => nothing_to_write.push(Op {
                        pending: index,
                        family,
                        offset,
                        change: Change::Remove,
                    }),
                }
            };
        match &mut p.kind {
            PendingKind::Allocate {
                requests,
                held,
                reused,
                error,
                ..
            } => {
                if error.is_some() {
                    // Failed: give back what it holds.
                    for family in Family::ALL {
                        if let Some(offset) = *held.get(family) {
                            remove(self, family, offset, work, ops);
                        }
                    }
                }
                let mark = ops.len();
                for family in Family::ALL {
                    let request = *requests.get(family);
                    if error.is_some() || held.get(family).is_some() || !request.needs_address() {
                        continue;
                    }
                    match self.pick(fingerprint, family, request, work) {
                        Ok(Pick::Already(offset)) => {
                            *held.get_mut(family) = Some(offset);
                            *reused.get_mut(family) = true;
                        }
                        Ok(Pick::Deferred) => {}
                        Ok(Pick::New(offset)) => ops.push(Op {
                            pending: index,
                            family,
                            offset,
                            change: Change::Insert,
                        }),
                        Err(e) => {
                            // Undo this round's picks of this request.
                            for op in ops.drain(mark..) {
                                if let Some(bits) =
                                    work.get_mut(&(op.family, shard_index(op.offset)))
                                {
                                    let _ = bits.remove(local_offset(op.offset), fingerprint);
                                }
                            }
                            *error = Some(e);
                            for family in Family::ALL {
                                if let Some(offset) = *held.get(family) {
                                    remove(self, family, offset, work, ops);
                                }
                            }
                        }
                    }
                }
            }
            PendingKind::Release { todo, error, .. } => {
                for &(family, offset) in todo.iter() {
                    let si = shard_index(offset);
                    if let Some(Cached::Corrupt { reason }) = self.shards.get(&(family, si)) {
                        *error = Some(self.unusable(family, si, &reason.clone()));
                        continue;
                    }
                    remove(self, family, offset, work, ops);
                }
            }
            PendingKind::Renew {
                family,
                offset,
                error,
                ..
            } => match self.plan_renew(index, fingerprint, *family, *offset, work) {
                Ok(Some(op)) => ops.push(op),
                Ok(None) => {}
                Err(e) => *error = Some(e),
            },
            PendingKind::Reclaim {
                family,
                offset,
                observed,
                outcome,
                ..
            } => {
                let (family, offset) = (*family, *offset);
                let si = shard_index(offset);
                if !self.fresh.contains(&(family, si)) {
                    // Decided on the shard as read at the start of a round only.
                    self.stale.insert((family, si));
                } else {
                    let unchanged = matches!(
                        self.shards.get(&(family, si)),
                        Some(Cached::Good { version, .. }) if version == observed
                    );
                    match unchanged
                        .then(|| self.plan_remove(index, fingerprint, family, offset, work))
                    {
                        Some(Some(op)) => ops.push(op),
                        // Written since it was observed, or not the owner's any more.
                        _ => *outcome = Some(false),
                    }
                }
            }
        }
        for op in nothing_to_write {
            p.settle_unheld(op);
        }
    }

    /// Plans a renewal: a write of the shard in which the owner holds `offset` (a touch if
    /// it holds it, an insert if it is free). `Ok(None)` when the shard must be read first.
    fn plan_renew(
        &mut self,
        index: usize,
        fingerprint: u64,
        family: Family,
        offset: u128,
        work: &mut Work,
    ) -> Result<Option<Op>, EngineError> {
        let si = shard_index(offset);
        if let Some(Cached::Corrupt { reason }) = self.shards.get(&(family, si)) {
            return Err(self.unusable(family, si, &reason.clone()));
        }
        if self.stale.contains(&(family, si)) {
            return Ok(None);
        }
        let network = self.plan.key.to_string();
        let address = self
            .plan
            .family(family)
            .and_then(|f| f.cidr.addr_at(offset))
            .ok_or_else(|| {
                EngineError::Alloc(AllocError::NoSubnet {
                    network: network.clone(),
                    family,
                })
            })?;
        let bits = self.working_copy(family, si, work).expect("not corrupt");
        let change = match bits.insert(local_offset(offset), fingerprint) {
            Ok(()) => Change::Insert,
            Err(BitsError::Taken { owner }) if owner == fingerprint => Change::Touch,
            Err(_) => {
                return Err(EngineError::Alloc(AllocError::InUse { network, address }));
            }
        };
        Ok(Some(Op {
            pending: index,
            family,
            offset,
            change,
        }))
    }

    /// Plans freeing `offset` if `fingerprint` holds it. Returns the op when that changes
    /// the shard; `None` when the owner does not hold it (nothing to write) or when that is
    /// not known yet: the cache may predate an allocation made by another replica, so "not
    /// held" is only believed from a shard read this round (else it is marked stale and the
    /// release waits a round).
    pub(super) fn plan_remove(
        &mut self,
        index: usize,
        fingerprint: u64,
        family: Family,
        offset: u128,
        work: &mut Work,
    ) -> Option<Op> {
        let si = shard_index(offset);
        if self.stale.contains(&(family, si)) {
            return None;
        }
        let holds = match work.get(&(family, si)) {
            Some(bits) => bits.owner_of(local_offset(offset)) == Some(fingerprint),
            None => match self.shards.get(&(family, si)) {
                Some(Cached::Good { bits, .. }) => {
                    bits.owner_of(local_offset(offset)) == Some(fingerprint)
                }
                _ => false,
            },
        };
        if !holds {
            if !self.fresh.contains(&(family, si))
                && !matches!(self.shards.get(&(family, si)), Some(Cached::Corrupt { .. }))
            {
                self.stale.insert((family, si));
            }
            return None;
        }
        let bits = self.working_copy(family, si, work)?;
        bits.remove(local_offset(offset), fingerprint).ok()?;
        Some(Op {
            pending: index,
            family,
            offset,
            change: Change::Remove,
        })
    }

    /// The working copy of a shard (created empty when the shard does not exist yet);
    /// `None` when the shard is corrupt.
    pub(super) fn working_copy<'w>(
        &self,
        family: Family,
        index: u128,
        work: &'w mut Work,
    ) -> Option<&'w mut ShardBits> {
        match work.entry((family, index)) {
            std::collections::btree_map::Entry::Occupied(e) => Some(e.into_mut()),
            std::collections::btree_map::Entry::Vacant(e) => {
                let bits = match self.shards.get(&(family, index)) {
                    Some(Cached::Good { bits, .. }) => bits.clone(),
                    Some(Cached::Corrupt { .. }) => return None,
                    None => ShardBits::new(),
                };
                Some(e.insert(bits))
            }
        }
    }

    /// Picks an address for one family of an Allocate, on the working copies.
    pub(super) fn pick(
        &mut self,
        fingerprint: u64,
        family: Family,
        request: AddressRequest,
        work: &mut Work,
    ) -> Result<Pick, EngineError> {
        let network = self.plan.key.to_string();
        let plan = self.plan.family(family).ok_or_else(|| {
            EngineError::Alloc(AllocError::NoSubnet {
                network: network.clone(),
                family,
            })
        })?;
        let offset = match request {
            AddressRequest::Static { ip, prefix } => {
                let offset =
                    check_static(&network, plan, ip, prefix).map_err(EngineError::Alloc)?;
                let si = shard_index(offset);
                if let Some(Cached::Corrupt { reason }) = self.shards.get(&(family, si)) {
                    return Err(self.unusable(family, si, &reason.clone()));
                }
                if self.stale.contains(&(family, si)) {
                    return Ok(Pick::Deferred);
                }
                let bits = self.working_copy(family, si, work).expect("not corrupt");
                return match bits.insert(local_offset(offset), fingerprint) {
                    Ok(()) => Ok(Pick::New(offset)),
                    Err(BitsError::Taken { owner }) if owner == fingerprint => {
                        Ok(Pick::Already(offset))
                    }
                    Err(_) => Err(EngineError::Alloc(AllocError::InUse {
                        network,
                        address: ip,
                    })),
                };
            }
            AddressRequest::Dynamic => {
                let cursor = *self.cursors.get(family);
                let shards = &self.shards;
                let stale = &self.stale;
                let view = |index: u128| match work.get(&(family, index)) {
                    _ if stale.contains(&(family, index)) => ShardView::Unusable,
                    Some(bits) => ShardView::Present(bits),
                    None => match shards.get(&(family, index)) {
                        Some(Cached::Good { bits, .. }) => ShardView::Present(bits),
                        Some(Cached::Corrupt { .. }) => ShardView::Unusable,
                        None => ShardView::Absent,
                    },
                };
                find_free(plan, cursor, view).ok_or_else(|| {
                    EngineError::Alloc(AllocError::Exhausted {
                        network: network.clone(),
                        family,
                        pool: describe_pool(plan),
                    })
                })?
            }
            AddressRequest::None | AddressRequest::Skip => unreachable!("no address needed"),
        };
        *self.cursors.get_mut(family) = offset + 1;
        let bits = self
            .working_copy(family, shard_index(offset), work)
            .expect("find_free skips corrupt shards");
        bits.insert(local_offset(offset), fingerprint)
            .expect("find_free returns a free offset");
        Ok(Pick::New(offset))
    }
}
