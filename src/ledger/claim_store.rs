//! The ledger as the idempotency layer's [`ClaimStore`].

use std::sync::Arc;
use std::time::Duration;

use super::{Claim, JobId, JobResult, JobState, Ledger, NewJob};
use crate::layers::idempotency::{ClaimStore, Claimed, StoreFuture};

/// [`Ledger::claim`], [`Ledger::finish`] and [`Ledger::release`], for
/// [`IdempotencyLayer::with_ledger`](crate::layers::idempotency::IdempotencyLayer::with_ledger).
/// Errors are [`LedgerError`](super::LedgerError)s, boxed.
impl ClaimStore for Ledger {
    fn claim(&self, job: NewJob, owner: Arc<str>, ttl: Duration) -> StoreFuture<Claimed> {
        let ledger = self.clone();
        Box::pin(async move {
            Ok(match ledger.claim(&job, &owner, ttl).await? {
                Claim::Leased(job) => Claimed::Leased(job.id),
                Claim::Settled(job) => Claimed::Settled {
                    job: job.id,
                    state: job.state,
                    result: job.result,
                },
                Claim::Busy(job) => Claimed::Busy {
                    job: job.id,
                    owner: job.lease_owner,
                    expires_at_ms: job.lease_expires_at,
                },
            })
        })
    }

    fn complete(&self, job: JobId, owner: Arc<str>, to: JobState, result: JobResult) -> StoreFuture<()> {
        let ledger = self.clone();
        Box::pin(async move { Ok(ledger.finish(job, &owner, to, &result).await?) })
    }

    fn release(&self, job: JobId, owner: Arc<str>) -> StoreFuture<()> {
        let ledger = self.clone();
        Box::pin(async move { Ok(ledger.release(job, &owner).await?) })
    }

    fn lease_ttl(&self) -> Duration {
        Ledger::lease_ttl(self)
    }
}
