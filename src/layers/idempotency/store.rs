//! The claim store behind the layer's run-once gate: [`ClaimStore`], and the values it
//! trades in ([`NewJob`], [`JobId`], [`JobState`], [`JobResult`], [`Claimed`]).
//!
//! The layer does not know where claims are kept. The crate's job ledger
//! (`contentdownload::ledger::Ledger`, feature `ledger`) is one store, on SQLite or
//! PostgreSQL; anything else that can hand out leases and record outcomes (Redis, a table
//! of your own, memory in a test) plugs in through this trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::context::{IdempotencyKey, WorkId};
use crate::error::BoxError;

/// A claim store's answer or acknowledgement, on its way. Boxed: a store's calls are usually
/// `async fn`s (sqlx's are) whose futures cannot be named. That is one allocation per store
/// call, only when a store is configured, and small next to the I/O it waits for.
pub type StoreFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// Where the idempotency layer keeps its claims: which operations are running, which are
/// done. See [`IdempotencyLayer::with_ledger`](super::IdempotencyLayer::with_ledger).
///
/// Per request the layer calls [`claim`](ClaimStore::claim) before sending and, if it was
/// leased the job, [`complete`](ClaimStore::complete) with the outcome after (FINALIZED,
/// FAILED or DEFERRED; unless
/// [`finalize_on_response(false)`](super::IdempotencyLayer::finalize_on_response) leaves a
/// success to the caller, who then calls `complete`, or [`release`](ClaimStore::release) to
/// give the job back unfinished). A store's error fails the request with that error (boxed,
/// so downcast it).
///
/// What a store must guarantee is "at most one live lease per key": two `claim`s of one key
/// must not both come back [`Claimed::Leased`] while the first lease lives. Across processes
/// that takes a shared store with conditional updates (the ledger's are); the example below
/// only holds within one process.
///
/// # Example: an in-memory store
///
/// ```
/// use std::collections::HashMap;
/// use std::sync::{Arc, Mutex};
/// use std::time::Duration;
///
/// use bytes::Bytes;
/// use contentdownload::layers::idempotency::{
///     AlreadyFinalized, ClaimStore, Claimed, IdempotencyLayer, JobId, JobResult, JobState, NewJob,
///     StoreFuture,
/// };
/// use http_body_util::Full;
/// use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
///
/// /// Jobs by key: (id, state, lease owner, result). Leases never expire here.
/// #[derive(Debug, Default)]
/// struct MemoryStore {
///     jobs: Mutex<HashMap<String, (JobId, JobState, Option<Arc<str>>, JobResult)>>,
/// }
///
/// impl ClaimStore for MemoryStore {
///     fn claim(&self, job: NewJob, owner: Arc<str>, _ttl: Duration) -> StoreFuture<Claimed> {
///         let mut jobs = self.jobs.lock().unwrap();
///         let next = JobId(jobs.len() as i64 + 1);
///         let entry = jobs
///             .entry(job.key.as_str().to_owned())
///             .or_insert((next, JobState::Planned, None, JobResult::default()));
///         let answer = match entry.1 {
///             JobState::Finalized | JobState::Skipped => Claimed::Settled {
///                 job: entry.0,
///                 state: entry.1,
///                 result: entry.3.clone(),
///             },
///             JobState::Leased if entry.2.as_ref() != Some(&owner) => Claimed::Busy {
///                 job: entry.0,
///                 owner: entry.2.as_deref().map(str::to_owned),
///                 expires_at_ms: None,
///             },
///             _ => {
///                 (entry.1, entry.2) = (JobState::Leased, Some(owner));
///                 Claimed::Leased(entry.0)
///             }
///         };
///         Box::pin(std::future::ready(Ok(answer)))
///     }
///
///     fn complete(&self, job: JobId, owner: Arc<str>, to: JobState, result: JobResult) -> StoreFuture<()> {
///         let mut jobs = self.jobs.lock().unwrap();
///         let done = match jobs.values_mut().find(|e| e.0 == job && e.2.as_ref() == Some(&owner)) {
///             Some(e) => {
///                 (e.1, e.2, e.3) = (to, None, result);
///                 Ok(())
///             }
///             None => Err(format!("{job} is not leased by {owner}").into()),
///         };
///         Box::pin(std::future::ready(done))
///     }
///
///     fn release(&self, job: JobId, owner: Arc<str>) -> StoreFuture<()> {
///         let mut jobs = self.jobs.lock().unwrap();
///         if let Some(e) = jobs.values_mut().find(|e| e.0 == job && e.2.as_ref() == Some(&owner)) {
///             (e.1, e.2) = (JobState::Planned, None);
///         }
///         Box::pin(std::future::ready(Ok(())))
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), contentdownload::error::BoxError> {
/// let sent = Arc::new(Mutex::new(0));
/// let counter = sent.clone();
/// let server = service_fn(move |_req: http::Request<Full<Bytes>>| {
///     *counter.lock().unwrap() += 1;
///     async { Ok::<_, std::convert::Infallible>(http::Response::new("ok")) }
/// });
/// let store = Arc::new(MemoryStore::default());
/// let mut svc = ServiceBuilder::new()
///     .layer(IdempotencyLayer::with_ledger(store.clone(), "run-1", "worker-a"))
///     .service(server);
///
/// let order = || http::Request::post("https://api.example.org/orders").body(Full::default());
/// svc.ready().await?.call(order()?).await?;
/// // the same operation again: the store says it is done, so nothing is sent
/// let err = svc.ready().await?.call(order()?).await.unwrap_err();
/// let done = err.downcast_ref::<AlreadyFinalized>().expect("settled");
/// assert_eq!(done.state, JobState::Finalized);
/// assert_eq!(*sent.lock().unwrap(), 1);
/// # Ok(()) }
/// ```
pub trait ClaimStore: fmt::Debug + Send + Sync + 'static {
    /// Plans `job` if its key is new, then leases it to `owner` for `ttl`, unless it is
    /// settled (FINALIZED, SKIPPED) or leased by another live owner. Re-claiming a key the
    /// same owner holds, or one that FAILED or was DEFERRED, leases it again.
    fn claim(&self, job: NewJob, owner: Arc<str>, ttl: Duration) -> StoreFuture<Claimed>;

    /// Records the outcome of a job `owner` holds the lease on and lets the lease go: `to` is
    /// FINALIZED, FAILED or DEFERRED (or SKIPPED). An error if `owner` no longer holds it.
    fn complete(&self, job: JobId, owner: Arc<str>, to: JobState, result: JobResult) -> StoreFuture<()>;

    /// Gives back a job `owner` holds without an outcome (back to PLANNED: the next claim
    /// runs it). The layer itself never releases (a request it sent has an outcome); this is
    /// for a caller that finishes jobs itself and gives up on one.
    fn release(&self, job: JobId, owner: Arc<str>) -> StoreFuture<()>;

    /// How long a lease lasts unless the layer is told otherwise
    /// ([`lease_ttl`](super::IdempotencyLayer::lease_ttl)). Ten minutes by default.
    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(600)
    }
}

/// A shared store is a store (so one store can back several layers and be inspected).
impl<S: ClaimStore + ?Sized> ClaimStore for Arc<S> {
    fn claim(&self, job: NewJob, owner: Arc<str>, ttl: Duration) -> StoreFuture<Claimed> {
        (**self).claim(job, owner, ttl)
    }

    fn complete(&self, job: JobId, owner: Arc<str>, to: JobState, result: JobResult) -> StoreFuture<()> {
        (**self).complete(job, owner, to, result)
    }

    fn release(&self, job: JobId, owner: Arc<str>) -> StoreFuture<()> {
        (**self).release(job, owner)
    }

    fn lease_ttl(&self) -> Duration {
        (**self).lease_ttl()
    }
}

/// What a [`ClaimStore`] answers to a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The job is now leased to the caller: run it, then complete it.
    Leased(JobId),
    /// The job is settled (FINALIZED or SKIPPED): do not run it again.
    Settled {
        /// The job.
        job: JobId,
        /// FINALIZED or SKIPPED.
        state: JobState,
        /// What was recorded.
        result: JobResult,
    },
    /// Another live owner holds the lease: do not run it twice.
    Busy {
        /// The job.
        job: JobId,
        /// The owner holding it, if the store knows.
        owner: Option<String>,
        /// When that lease expires, Unix milliseconds, if the store knows.
        expires_at_ms: Option<i64>,
    },
}

/// A claim store's id of a job (the ledger's row id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "job {}", self.0)
    }
}

/// Where a job is in its life: `PLANNED → LEASED → FINALIZED | FAILED | DEFERRED | SKIPPED`.
///
/// The legal moves are those of [`JobState::can_become`]; the ledger refuses anything else
/// (`LedgerError::IllegalTransition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    /// Known and waiting for a worker.
    Planned,
    /// Held by one worker until its lease expires (renewed by heartbeats).
    Leased,
    /// Done; its result is recorded. Terminal, unless its file is found missing or
    /// changed: then it is re-planned (the ledger's `replan`).
    Finalized,
    /// Given up on; the reason is recorded. Can be re-planned (the ledger's `requeue`).
    Failed,
    /// Put off for a later pass (the provider asked us to wait). Can be re-planned.
    Deferred,
    /// Deliberately not done (already present, out of scope). Terminal.
    Skipped,
}

impl JobState {
    /// Every state, in life order.
    pub const ALL: [JobState; 6] = [
        JobState::Planned,
        JobState::Leased,
        JobState::Finalized,
        JobState::Failed,
        JobState::Deferred,
        JobState::Skipped,
    ];

    /// The state's name as stored (`"PLANNED"`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Planned => "PLANNED",
            JobState::Leased => "LEASED",
            JobState::Finalized => "FINALIZED",
            JobState::Failed => "FAILED",
            JobState::Deferred => "DEFERRED",
            JobState::Skipped => "SKIPPED",
        }
    }

    /// Whether a job in `self` may move to `to`:
    /// PLANNED → LEASED | SKIPPED; LEASED → FINALIZED | FAILED | DEFERRED | SKIPPED | PLANNED
    /// (released, or reclaimed after its lease expired); FAILED | DEFERRED → PLANNED (requeued);
    /// FINALIZED → PLANNED (re-planned: its file is missing or changed). SKIPPED is terminal.
    pub const fn can_become(self, to: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, to),
            (Planned, Leased)
                | (Planned, Skipped)
                | (Leased, Finalized | Failed | Deferred | Skipped | Planned)
                | (Failed | Deferred | Finalized, Planned)
        )
    }

    /// Whether nothing more will happen to a job in this state (FINALIZED, SKIPPED) in the
    /// normal course: a claim finds it settled. (A FINALIZED job whose file is gone is the
    /// exception: the ledger's `replan`.)
    pub const fn is_terminal(self) -> bool {
        matches!(self, JobState::Finalized | JobState::Skipped)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a job, recorded with its final state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// A short classification (`"pdf"`, `"http_200"`, `"not_found"`, ...).
    pub outcome: Option<String>,
    /// Where the payload was stored, relative to the output folder.
    pub path: Option<String>,
    /// The payload's SHA-256, lower-case hex.
    pub sha256: Option<String>,
    /// The payload's size in bytes.
    pub bytes: Option<i64>,
    /// Why (for FAILED, DEFERRED, SKIPPED), in a few words.
    pub reason: Option<String>,
}

impl JobResult {
    /// A result with just an outcome.
    pub fn outcome(outcome: impl Into<String>) -> Self {
        JobResult {
            outcome: Some(outcome.into()),
            ..JobResult::default()
        }
    }

    /// A result with just a reason.
    pub fn reason(reason: impl Into<String>) -> Self {
        JobResult {
            reason: Some(reason.into()),
            ..JobResult::default()
        }
    }
}

/// A job to plan: one logical unit of work, identified by its idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    /// The run that planned it.
    pub run_id: String,
    /// The work it serves.
    pub work_id: WorkId,
    /// Its idempotency key; planning the same key twice yields one job.
    pub key: IdempotencyKey,
    /// The canonical URL it fetches.
    pub canonical_url: String,
}

/// Lower-case hex of some bytes (a dependency for twenty lines is not worth it).
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    // Into a zeroed buffer, two digits per byte, then one UTF-8 check: a push per digit
    // (a `char` into a `String`, or a byte into a `Vec`) pays a capacity check each time,
    // about 900 instructions per SHA-256, four hashes per downloaded file (callgrind of a
    // bulk run).
    let mut out = vec![0u8; bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0xf)];
    }
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use futures_util::FutureExt;
    use http::{Request, Response};
    use tower_test::mock;

    use super::*;
    use crate::layers::idempotency::{AlreadyFinalized, IdempotencyLayer, LeasedElsewhere, LedgerJob};

    /// Answers claims from a script and writes down every call.
    #[derive(Debug, Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Result<Claimed, &'static str>>>,
        complete_fails: bool,
        calls: Mutex<Vec<String>>,
    }

    impl Scripted {
        fn new(answers: impl IntoIterator<Item = Result<Claimed, &'static str>>) -> Arc<Self> {
            Arc::new(Scripted {
                answers: Mutex::new(answers.into_iter().collect()),
                ..Scripted::default()
            })
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ClaimStore for Scripted {
        fn claim(&self, job: NewJob, owner: Arc<str>, ttl: Duration) -> StoreFuture<Claimed> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("claim {} {owner} {}s", job.work_id.as_str(), ttl.as_secs()));
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or(Err("no answer left"));
            Box::pin(std::future::ready(answer.map_err(BoxError::from)))
        }

        fn complete(&self, job: JobId, owner: Arc<str>, to: JobState, result: JobResult) -> StoreFuture<()> {
            self.calls.lock().unwrap().push(format!(
                "complete {} {owner} {to} {}",
                job.0,
                result.outcome.unwrap_or_default()
            ));
            let done = if self.complete_fails {
                Err("disk full".into())
            } else {
                Ok(())
            };
            Box::pin(std::future::ready(done))
        }

        fn release(&self, job: JobId, owner: Arc<str>) -> StoreFuture<()> {
            self.calls.lock().unwrap().push(format!("release {} {owner}", job.0));
            Box::pin(std::future::ready(Ok(())))
        }

        fn lease_ttl(&self) -> Duration {
            Duration::from_secs(42)
        }
    }

    type Handle = mock::Handle<Request<&'static str>, Response<()>>;

    fn request(work: &str) -> Request<&'static str> {
        let mut req = Request::get("https://example.org/a.pdf").body("").unwrap();
        crate::context::RequestContextExt::set_work_id(&mut req, crate::context::WorkId::new(work));
        req
    }

    type Spawned =
        mock::Spawn<crate::layers::idempotency::Idempotency<mock::Mock<Request<&'static str>, Response<()>>>>;

    fn spawn(store: Arc<Scripted>) -> (Spawned, Handle) {
        mock::spawn_layer(IdempotencyLayer::with_ledger(store, "run", "me"))
    }

    #[tokio::test]
    async fn a_leased_claim_runs_once_and_completes_with_the_outcome() {
        let store = Scripted::new([Ok(Claimed::Leased(JobId(7)))]);
        let (mut svc, mut handle) = spawn(store.clone());
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(request("W1"));
        let serve = async {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(Response::new(()));
        };
        let (res, ()) = tokio::join!(fut, serve);
        let job = res.unwrap().extensions().get::<LedgerJob>().cloned().unwrap();
        assert_eq!((job.job, job.state, &*job.owner), (JobId(7), JobState::Finalized, "me"));
        assert_eq!(store.calls(), ["claim W1 me 42s", "complete 7 me FINALIZED http_200"]);
    }

    #[tokio::test]
    async fn settled_and_busy_claims_send_nothing() {
        let settled = Claimed::Settled {
            job: JobId(1),
            state: JobState::Skipped,
            result: JobResult::reason("out of scope"),
        };
        let busy = Claimed::Busy {
            job: JobId(2),
            owner: Some("other".into()),
            expires_at_ms: Some(99),
        };
        let store = Scripted::new([Ok(settled), Ok(busy)]);
        let (mut svc, mut handle) = spawn(store.clone());
        handle.allow(2);

        assert!(svc.poll_ready().is_ready());
        let err = svc.call(request("W1")).await.unwrap_err();
        let done = err
            .downcast_ref::<AlreadyFinalized>()
            .unwrap_or_else(|| panic!("{err}"));
        assert_eq!((done.job, done.state), (JobId(1), JobState::Skipped));
        assert_eq!(done.result().reason.as_deref(), Some("out of scope"));

        assert!(svc.poll_ready().is_ready());
        let err = svc.call(request("W2")).await.unwrap_err();
        let busy = err.downcast_ref::<LeasedElsewhere>().unwrap_or_else(|| panic!("{err}"));
        assert_eq!(
            (busy.job, busy.owner.as_deref(), busy.expires_at_ms),
            (JobId(2), Some("other"), Some(99))
        );

        assert!(handle.next_request().now_or_never().is_none(), "nothing was sent");
        assert_eq!(store.calls(), ["claim W1 me 42s", "claim W2 me 42s"]);
    }

    #[tokio::test]
    async fn store_errors_reach_the_caller() {
        // the claim fails: nothing is sent
        let store = Scripted::new([Err("database is locked")]);
        let (mut svc, mut handle) = spawn(store);
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let err = svc.call(request("W1")).await.unwrap_err();
        assert_eq!(err.to_string(), "database is locked");
        assert!(handle.next_request().now_or_never().is_none(), "nothing was sent");

        // the request succeeded but its outcome could not be recorded: an error, not a
        // success nobody can find again
        let store = Arc::new(Scripted {
            answers: Mutex::new([Ok(Claimed::Leased(JobId(3)))].into()),
            complete_fails: true,
            ..Scripted::default()
        });
        let (mut svc, mut handle) = spawn(store.clone());
        handle.allow(1);
        assert!(svc.poll_ready().is_ready());
        let fut = svc.call(request("W3"));
        let serve = async {
            let (_, send) = handle.next_request().await.unwrap();
            send.send_response(Response::new(()));
        };
        let (res, ()) = tokio::join!(fut, serve);
        assert_eq!(res.unwrap_err().to_string(), "disk full");
        assert_eq!(store.calls(), ["claim W3 me 42s", "complete 3 me FINALIZED http_200"]);
    }
}
