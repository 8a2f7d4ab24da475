//! The requests inside a worker's rounds: what each one asked, what it holds so far, and
//! how it is answered.

use danm_core::{AddressRequest, Family, PerFamily};
use tokio::sync::oneshot;

use crate::error::EngineError;
use crate::store::Version;

/// Addresses (offsets in the family's CIDR) held by one request.
pub type Held = PerFamily<Option<u128>>;

/// What an Allocate got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Granted {
    /// The addresses the owner holds now.
    pub held: Held,
    /// Families whose (static) address the owner already held before the request: nothing
    /// was written for them, so the caller renews them once it has recorded the owner (see
    /// [`WorkerHandle::renew`]).
    pub reused: PerFamily<bool>,
}

/// One request inside a round.
pub(super) struct Pending {
    pub(super) fingerprint: u64,
    pub(super) kind: PendingKind,
    pub(super) attempts: u32,
}

pub(super) enum PendingKind {
    Allocate {
        requests: PerFamily<AddressRequest>,
        held: Held,
        /// Families whose static address the owner already held before this request.
        reused: PerFamily<bool>,
        /// Set once the request has failed: what it holds is then given back first.
        error: Option<EngineError>,
        reply: oneshot::Sender<Result<Granted, EngineError>>,
    },
    Release {
        todo: Vec<(Family, u128)>,
        done: Vec<(Family, u128)>,
        error: Option<EngineError>,
        reply: oneshot::Sender<Result<Vec<(Family, u128)>, EngineError>>,
    },
    /// Make the owner hold `offset` with a write of the shard (see
    /// [`super::WorkerHandle::renew`]).
    Renew {
        family: Family,
        offset: u128,
        done: bool,
        error: Option<EngineError>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    /// Free `offset` if the owner holds it and the shard is still at `observed`.
    Reclaim {
        family: Family,
        offset: u128,
        observed: Version,
        outcome: Option<bool>,
        reply: oneshot::Sender<Result<bool, EngineError>>,
    },
}

/// What a tentative change does to its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// Sets the owner's bit.
    Insert,
    /// Clears the owner's bit.
    Remove,
    /// Changes no bit: the shard is written so that its version changes.
    Touch,
}

/// A tentative change of one round.
#[derive(Clone, Copy, Debug)]
pub(super) struct Op {
    pub(super) pending: usize,
    pub(super) family: Family,
    pub(super) offset: u128,
    pub(super) change: Change,
}

impl Pending {
    pub(super) fn new(fingerprint: u64, kind: PendingKind) -> Pending {
        Pending {
            fingerprint,
            kind,
            attempts: 0,
        }
    }

    /// Records the outcome of one op: whether it is in the shard now.
    pub(super) fn settle(&mut self, op: Op, landed: bool) {
        match &mut self.kind {
            PendingKind::Allocate { held, .. } => {
                let slot = held.get_mut(op.family);
                match op.change {
                    Change::Insert if landed => *slot = Some(op.offset),
                    Change::Remove if landed => *slot = None,
                    _ => {}
                }
            }
            PendingKind::Release { todo, done, .. } => {
                if landed {
                    todo.retain(|a| *a != (op.family, op.offset));
                    done.push((op.family, op.offset));
                }
            }
            PendingKind::Renew { done, .. } => *done = landed,
            PendingKind::Reclaim { outcome, .. } => *outcome = Some(landed),
        }
    }

    /// Records a free that needs no write: the owner does not hold the address (any more).
    /// It is done, but nothing was freed: a release does not report it.
    pub(super) fn settle_unheld(&mut self, op: Op) {
        match &mut self.kind {
            PendingKind::Release { todo, .. } => todo.retain(|a| *a != (op.family, op.offset)),
            _ => self.settle(op, true),
        }
    }

    pub(super) fn is_finished(&self) -> bool {
        match &self.kind {
            PendingKind::Allocate {
                requests,
                held,
                error,
                ..
            } => match error {
                Some(_) => held.all(|_, h| h.is_none()),
                None => requests.all(|f, r| !r.needs_address() || held.get(f).is_some()),
            },
            PendingKind::Release { todo, error, .. } => todo.is_empty() || error.is_some(),
            PendingKind::Renew { done, error, .. } => *done || error.is_some(),
            PendingKind::Reclaim { outcome, .. } => outcome.is_some(),
        }
    }

    pub(super) fn answer(self) {
        match self.kind {
            PendingKind::Allocate {
                held,
                reused,
                error,
                reply,
                ..
            } => {
                let _ = reply.send(match error {
                    Some(e) => Err(e),
                    None => Ok(Granted { held, reused }),
                });
            }
            PendingKind::Release {
                done, error, reply, ..
            } => {
                let _ = reply.send(match error {
                    Some(e) => Err(e),
                    None => Ok(done),
                });
            }
            PendingKind::Renew { error, reply, .. } => {
                let _ = reply.send(error.map_or(Ok(()), Err));
            }
            PendingKind::Reclaim { outcome, reply, .. } => {
                let _ = reply.send(Ok(outcome.unwrap_or(false)));
            }
        }
    }

    pub(super) fn fail_now(self, error: EngineError) {
        match self.kind {
            PendingKind::Allocate { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingKind::Release { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingKind::Renew { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            PendingKind::Reclaim { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Gives up on the request (too many rounds, or the store is unreadable).
    pub(super) fn abandon(self, error: EngineError) {
        if let PendingKind::Allocate { held, .. } = &self.kind
            && held.any(|_, h| h.is_some())
        {
            tracing::error!(
                ?held,
                "abandoned request still holds addresses: they stay recorded under its owner \
                 fingerprint and are reclaimed by garbage collection"
            );
        }
        self.fail_now(error);
    }
}
