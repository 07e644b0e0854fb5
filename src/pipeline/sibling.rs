//! Works leased by another worker (a sibling process on the same folder, or another
//! machine on the same ledger): wait for that lease to end by polling the ledger, then take
//! the sibling's outcome or the work itself; no blanket sleep of a lease TTL.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{Stream, StreamExt};

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use super::work::{cancelled, Core, Later, Processed};
use crate::ledger::{liveness_of, JobState, LedgerError, Liveness};
use crate::manifest::{Outcome, WorkRecord};
use crate::reason::ReasonCode;
use crate::works::Work;

/// The first pause between two looks at a lease held elsewhere; it doubles up to
/// [`POLL_MAX`].
pub(super) const POLL_FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two looks.
pub(super) const POLL_MAX: Duration = Duration::from_secs(2);
/// At most this many works wait for other workers' leases at once (each polls the ledger).
const MAX_WAITING: usize = 64;

/// How a wait for another worker's lease ended.
enum LeaseWait {
    /// The job is no longer leased by a live worker (settled, given back, expired, or its
    /// holder has ended): claim it, which says which.
    Ended,
    /// Still held by a live (or unknown) worker at the end of the wait.
    Held(String),
    /// The run was interrupted.
    Cancelled,
}

/// A work left to the worker that leases it: skipped here, with why.
pub(super) fn left_to_holder(work: &Work, detail: String) -> WorkRecord {
    WorkRecord {
        reason: Some(ReasonCode::LeasedElsewhere),
        detail: Some(detail),
        ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
    }
}

impl Core {
    /// Waits for the works leased by other workers and settles each
    /// ([`after_sibling`](Core::after_sibling)); at most [`MAX_WAITING`] wait at once, and
    /// at most one per worker fetches at once. Returns when the waits give up (one lease
    /// TTL from now) and the records, as they come.
    pub(super) fn after_siblings<'a>(
        &'a self,
        leased: Vec<Later>,
        cancel: &'a watch::Receiver<bool>,
    ) -> (Instant, impl Stream<Item = Result<WorkRecord, LedgerError>> + 'a) {
        let ttl = self.config.lease_ttl;
        let deadline = Instant::now() + ttl;
        let mut holders: Vec<&str> = leased.iter().map(|l| l.detail.as_str()).collect();
        holders.sort_unstable();
        holders.dedup();
        tracing::info!(
            works = leased.len(),
            max_wait_s = ttl.as_secs(),
            holders = %holders.iter().take(3).copied().collect::<Vec<_>>().join(", "),
            "waiting for other workers' leases on these works to end (polling the ledger); \
             what is still held after the wait is left to them"
        );
        let fetching = Arc::new(Semaphore::new(self.config.workers));
        let waits = futures_util::stream::iter(leased)
            .map(move |l| {
                let fetching = fetching.clone();
                async move { self.after_sibling(l, deadline, &fetching, cancel.clone()).await }
            })
            .buffer_unordered(MAX_WAITING.max(self.config.workers));
        (deadline, waits)
    }

    /// A work that was leased by another worker when it came up: waits (at most
    /// `deadline`) for that lease to end, then claims the work, which yields the sibling's
    /// outcome (skipped, already downloaded) or the work to do (given back, expired, its
    /// holder ended); a work still held at `deadline` is left to its holder.
    ///
    /// Waiting is cheap, so many works wait at once; `fetching` (one permit per worker)
    /// bounds how many of them fetch at once.
    async fn after_sibling(
        &self,
        later: Later,
        deadline: Instant,
        fetching: &Semaphore,
        cancel: watch::Receiver<bool>,
    ) -> Result<WorkRecord, LedgerError> {
        let work = later.work;
        // bounded: a work that another worker takes between our look and our claim, again
        // and again, is left to it
        for _ in 0..5 {
            match self.await_lease(&work, deadline, &cancel).await? {
                LeaseWait::Ended => {}
                LeaseWait::Held(owner) => {
                    return Ok(left_to_holder(
                        &work,
                        format!(
                        "left to {owner}, which still held the work's lease after a wait of {} s (--lease-ttl-secs)",
                        self.config.lease_ttl.as_secs()
                    ),
                    ))
                }
                LeaseWait::Cancelled => return Ok(left_to_holder(&work, later.detail)),
            }
            let Ok(_permit) = fetching.acquire().await else {
                return Ok(left_to_holder(&work, later.detail));
            };
            match self.process(work.clone(), true, cancel.clone(), None).await? {
                Processed::Done(record) => return Ok(record),
                Processed::Cancelled => return Ok(left_to_holder(&work, later.detail)),
                // taken by another worker in between: wait for that one
                Processed::Later(_) => continue,
            }
        }
        Ok(left_to_holder(&work, later.detail))
    }

    /// Polls the work's job with backoff ([`POLL_FIRST`] doubling to [`POLL_MAX`], never
    /// past the lease's expiry or `deadline`) until no live worker other than this one
    /// leases it.
    async fn await_lease(
        &self,
        work: &Work,
        deadline: Instant,
        cancel: &watch::Receiver<bool>,
    ) -> Result<LeaseWait, LedgerError> {
        let Some(ledger) = &self.ledger else {
            return Ok(LeaseWait::Ended);
        };
        let key = self.job_for(work).key;
        let mut pause = POLL_FIRST;
        loop {
            let Some(job) = ledger.get_by_key(&key).await? else {
                return Ok(LeaseWait::Ended);
            };
            let owner = job.lease_owner.as_deref();
            let now_ms = ledger.clock().now_ms();
            let held_elsewhere = job.state == JobState::Leased
                && owner != Some(self.config.worker_id.as_str())
                && job.lease_expires_at.is_some_and(|t| t >= now_ms)
                && liveness_of(owner) != Liveness::Dead;
            if !held_elsewhere {
                return Ok(LeaseWait::Ended);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(LeaseWait::Held(owner.unwrap_or_default().to_owned()));
            }
            // look again when the lease would run out, if that is sooner than the backoff
            let expires_in = job.lease_expires_at.map_or(pause, |t| {
                Duration::from_millis(u64::try_from(t - now_ms).unwrap_or(0) + 1)
            });
            let wait = pause.min(expires_in).min(deadline - now);
            tokio::select! {
                () = cancelled(cancel.clone()) => return Ok(LeaseWait::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            pause = (pause * 2).min(POLL_MAX);
        }
    }
}
