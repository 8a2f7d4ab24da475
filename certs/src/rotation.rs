//! The CA's rotation, as a pure state machine over the CA Secret's contents: nothing is
//! ever trusted by one side and not yet by the other.
//!
//! 1. **Steady**: one CA signs; the trust bundle (what every client and the API server
//!    trust: the `ca.crt` of the ConfigMap, of every TLS Secret, and the webhooks'
//!    `caBundle`) holds it.
//! 2. **Next published**: once the CA expires within `renew_before`, a new CA is made and
//!    added to the bundle, but does not sign yet: clients learn to trust it first.
//! 3. **Switch**: `overlap` after publication, the new CA signs (every certificate is
//!    re-issued by it); the old one stays in the bundle, as *previous*, for another
//!    `overlap`, while servers pick up their new certificates.
//! 4. **Previous dropped**: the bundle holds the new CA alone again.
//!
//! `overlap` must cover the time the bundle takes to reach every consumer (kubelet's
//! Secret and ConfigMap volume sync, the CNI installer's copy on each node, a reload by
//! ipamd and the webhook): minutes; the default is a day.

use std::time::Duration;

use super::CertsError;
use super::issue::Ca;

/// When the CA is rotated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    /// How long a new CA is valid.
    pub ca_validity: Duration,
    /// A next CA is published when the current one expires within this.
    pub renew_before: Duration,
    /// How long a next CA is trusted before it signs, and a previous one after.
    pub overlap: Duration,
}

impl RotationPolicy {
    /// Refuses a policy whose phases would overlap: the CA's life must hold the renewal
    /// window and one overlap after it, and the window two overlaps (publish, then switch
    /// with room to spare before the end).
    pub fn check(&self, leaf_renew_before: Duration) -> Result<(), String> {
        if self.renew_before < self.overlap * 2 + leaf_renew_before {
            return Err(format!(
                "--ca-renew-before ({}s) must be at least twice --ca-overlap ({}s) plus --renew-before ({}s)",
                self.renew_before.as_secs(),
                self.overlap.as_secs(),
                leaf_renew_before.as_secs()
            ));
        }
        if self.ca_validity <= self.renew_before + self.overlap {
            return Err(format!(
                "--ca-validity ({}s) must be longer than --ca-renew-before ({}s) plus --ca-overlap ({}s)",
                self.ca_validity.as_secs(),
                self.renew_before.as_secs(),
                self.overlap.as_secs()
            ));
        }
        Ok(())
    }
}

/// The CAs of the suite at one moment.
#[derive(Debug)]
pub struct Rotation {
    /// The CA that signs.
    pub current: Ca,
    /// A CA published in the bundle that does not sign yet, and when it was published
    /// (Unix seconds).
    pub next: Option<(Ca, i64)>,
    /// The CA that signed before (its certificate, PEM), trusted until the given time.
    pub previous: Option<(String, i64)>,
}

impl Rotation {
    /// Moves the rotation on to `now` (Unix seconds): drops a previous CA whose time is
    /// up, switches to a next CA published `overlap` ago, publishes a next CA when the
    /// current one expires within `renew_before`. What changed, for the report.
    pub fn advance(
        &mut self,
        now: i64,
        policy: &RotationPolicy,
    ) -> Result<Vec<String>, CertsError> {
        let overlap = secs(policy.overlap);
        let mut changed = Vec::new();
        if let Some((_, until)) = &self.previous
            && now >= *until
        {
            self.previous = None;
            changed.push("the previous CA left the trust bundle".to_owned());
        }
        // A current CA that has expired (nobody ran this for too long) is replaced at
        // once: it vouches for nothing any more, so there is nothing to overlap with.
        if self.current.not_after() <= now {
            let next = match self.next.take() {
                Some((next, _)) => next,
                None => Ca::generate_at(policy.ca_validity, now)?,
            };
            self.current = next;
            self.previous = None;
            tracing::warn!("the CA had expired: replaced without an overlap");
            changed.push("the expired CA was replaced".to_owned());
            return Ok(changed);
        }
        if let Some((_, published)) = &self.next
            && now >= published + overlap
        {
            let (next, _) = self.next.take().expect("checked above");
            let old = std::mem::replace(&mut self.current, next);
            self.previous = Some((old.cert_pem().to_owned(), now + overlap));
            changed.push("the next CA now signs; the previous one stays trusted".to_owned());
        }
        if self.next.is_none() && self.current.not_after() - now <= secs(policy.renew_before) {
            self.next = Some((Ca::generate_at(policy.ca_validity, now)?, now));
            changed.push("a next CA joined the trust bundle".to_owned());
        }
        Ok(changed)
    }

    /// What clients trust: the current CA, the next one, the previous one (PEM).
    pub fn bundle(&self) -> String {
        let mut out = String::new();
        let mut add = |pem: &str| {
            out.push_str(pem.trim_end());
            out.push('\n');
        };
        add(self.current.cert_pem());
        if let Some((next, _)) = &self.next {
            add(next.cert_pem());
        }
        if let Some((previous, _)) = &self.previous {
            add(previous);
        }
        out
    }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RotationPolicy {
        RotationPolicy {
            ca_validity: Duration::from_secs(100),
            renew_before: Duration::from_secs(40),
            overlap: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_ca_is_published_switched_to_and_the_old_one_dropped_in_turn() {
        let policy = policy();
        assert_eq!(policy.check(Duration::from_secs(10)), Ok(()));
        let start = Ca::generate(policy.ca_validity).unwrap();
        let t0 = start.not_after() - 100;
        let first = start.cert_pem().to_owned();
        let mut r = Rotation {
            current: start,
            next: None,
            previous: None,
        };
        // Steady until the renewal window.
        assert!(r.advance(t0 + 59, &policy).unwrap().is_empty());
        assert_eq!(r.bundle().matches("BEGIN CERTIFICATE").count(), 1);
        // Published: trusted, not signing.
        assert_eq!(r.advance(t0 + 60, &policy).unwrap().len(), 1);
        assert_eq!(r.current.cert_pem(), first);
        assert_eq!(r.bundle().matches("BEGIN CERTIFICATE").count(), 2);
        assert!(r.advance(t0 + 69, &policy).unwrap().is_empty());
        // Switched after the overlap: the old CA is still trusted.
        assert_eq!(r.advance(t0 + 70, &policy).unwrap().len(), 1);
        assert_ne!(r.current.cert_pem(), first);
        assert!(r.bundle().contains(first.trim_end()));
        // Dropped one overlap later.
        assert!(r.advance(t0 + 79, &policy).unwrap().is_empty());
        assert_eq!(r.advance(t0 + 80, &policy).unwrap().len(), 1);
        assert!(!r.bundle().contains(first.trim_end()));
        assert_eq!(r.bundle().matches("BEGIN CERTIFICATE").count(), 1);
    }

    #[test]
    fn phases_that_would_overlap_are_refused() {
        let mut p = policy();
        p.renew_before = Duration::from_secs(25);
        assert!(
            p.check(Duration::from_secs(10))
                .unwrap_err()
                .contains("--ca-renew-before")
        );
        let mut p = policy();
        p.ca_validity = Duration::from_secs(50);
        assert!(
            p.check(Duration::from_secs(10))
                .unwrap_err()
                .contains("--ca-validity")
        );
    }
}
