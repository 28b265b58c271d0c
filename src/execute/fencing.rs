//! The lease a replica of the daemon works under, as the runner sees it.
//!
//! A replica of `salvage serve` on a shared store works an incident under a claim: its store
//! refuses every write once the claim is someone else's ([`crate::store::FencedStore`]). That
//! protects the store, not the runtime: a replica that stalled (a GC-like pause, `SIGSTOP`)
//! past its lease and woke up would still send the effect it was about to send. So before every
//! effect the runner also asks the lease whether this process may still trust it **by its own
//! monotonic clock** — the claim's `trusted_until`, moved forward by each renewal the database
//! acknowledged — and stops with [`StoreError::LeaseLost`] when not. The window that remains
//! (a stall between this check and the request leaving) is closed by the epoch in the
//! idempotency key, for runtimes that refuse a stale epoch.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use crate::store::{Fence, StoreError};

/// A claim held by this process: its fence and until when it may be trusted.
#[derive(Debug, Clone)]
pub struct ReplicaLease {
    fence: Fence,
    trusted_until: Arc<Mutex<Instant>>,
    /// Effects not sent because the lease ran out (shared with whoever counts them).
    refused: Arc<AtomicU64>,
}

impl ReplicaLease {
    pub fn new(fence: Fence, trusted_until: Instant) -> ReplicaLease {
        ReplicaLease { fence, trusted_until: Arc::new(Mutex::new(trusted_until)), refused: Arc::default() }
    }

    /// Counts the effects it refuses in `refused`.
    pub fn counting(self, refused: Arc<AtomicU64>) -> ReplicaLease {
        ReplicaLease { refused, ..self }
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    pub fn epoch(&self) -> i64 {
        self.fence.epoch
    }

    /// A renewal the database acknowledged: trusted until `until` (never moved back).
    pub fn extend(&self, until: Instant) {
        let mut trusted = self.trusted_until.lock().unwrap_or_else(PoisonError::into_inner);
        if until > *trusted {
            *trusted = until;
        }
    }

    /// The claim is gone (a renewal did not return it): nothing more is sent under it.
    pub fn end(&self) {
        let now = Instant::now();
        let mut trusted = self.trusted_until.lock().unwrap_or_else(PoisonError::into_inner);
        if *trusted > now {
            *trusted = now;
        }
    }

    pub fn is_trusted(&self) -> bool {
        Instant::now() < *self.trusted_until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Err(LeaseLost)` when this process may no longer act under the lease.
    pub fn check(&self) -> Result<(), StoreError> {
        if self.is_trusted() {
            return Ok(());
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(key = %self.fence.key, epoch = self.fence.epoch, "The lease ran out before an effect; not sending it.");
        Err(StoreError::LeaseLost {
            key: self.fence.key.clone(),
            epoch: self.fence.epoch,
            holder: self.fence.holder.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn fence() -> Fence {
        Fence { key: "incident/r-1".into(), holder: "replica-a".into(), epoch: 7 }
    }

    #[test]
    fn a_lease_is_trusted_until_its_time_and_renewals_only_move_it_forward() {
        let lease = ReplicaLease::new(fence(), Instant::now() + Duration::from_secs(60));
        assert!(lease.check().is_ok());
        lease.extend(Instant::now());
        assert!(lease.is_trusted(), "a late renewal answer does not shorten the lease");
        lease.end();
        match lease.check() {
            Err(StoreError::LeaseLost { key, epoch, holder }) => {
                assert_eq!((key.as_str(), epoch, holder.as_str()), ("incident/r-1", 7, "replica-a"));
            }
            other => panic!("expected LeaseLost, got {other:?}"),
        }
        let refused = Arc::new(AtomicU64::new(0));
        let stalled = ReplicaLease::new(fence(), Instant::now()).counting(refused.clone());
        assert!(stalled.check().is_err(), "past its time (a stalled process waking up), nothing is sent");
        assert!(stalled.check().is_err());
        assert_eq!(refused.load(Ordering::Relaxed), 2, "every refusal is counted");
    }
}
