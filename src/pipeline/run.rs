//! [`Pipeline`]: works in, outcomes out, with the ledger, the manifest and a second pass.
//!
//! A run is a first pass over the input ([`Pipeline::first_pass`]), a wait for the works
//! leased by other workers ([`Pipeline::after_siblings`]), the second pass's plan
//! ([`Pipeline::plan`]) and the second pass itself ([`Pipeline::second_pass`]).

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, Stream, StreamExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::PipelineConfig;
use super::error::{DurabilityError, PipelineError};
use super::frontier::{dispatch, Slot};
use super::lock;
use super::rate_log::{RateLog, RATE_LOG_EVERY};
use super::second_pass::{second_attempt_at, SourceHints};
use super::work::{cancelled, Core, Later, Processed};
use crate::input::Skip;
use crate::layers::telemetry::RecordWriter;
use crate::ledger::{Ledger, LedgerError, SETTLED_BATCH};
use crate::manifest::{ManifestLine, Outcome, SharedManifest, SummaryRecord, WorkRecord};
use crate::reason::ReasonCode;
use crate::service::Stack;
use crate::works::{LineError, Work};

/// After a fatal error, how long the works in flight get to stop and give their leases
/// back before the run returns the error.
const FATAL_DRAIN: Duration = Duration::from_secs(10);

/// Batches of [`SETTLED_BATCH`] works whose settled read runs at once, in order, while
/// the input is read on: one at a time left the input waiting on each answer.
const SETTLED_READS_AHEAD: usize = 3;

/// How many works are claimed in one group ahead of their start: twice the workers, 8 to
/// 128 (the ledger's batch). Each claim alone was a write transaction of its own, several
/// WAL frames; a group shares one. At most two groups are claimed and not yet started, so
/// another process on the same input meets at most that many leases of ours beyond the
/// works in flight.
fn claim_group(workers: usize) -> usize {
    workers.saturating_mul(2).clamp(8, 128)
}

/// How often a run waiting for other workers' leases says how long it may still wait.
const COUNTDOWN_EVERY: Duration = Duration::from_secs(10);

/// Counts so far, handed to the progress callback after every work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Works finished (any outcome).
    pub done: u64,
    /// Downloaded in this run.
    pub downloaded: u64,
    /// Skipped (already there).
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
    /// Waiting for the second pass.
    pub deferred: u64,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// The download pipeline: for every work, claim it in the ledger (when there is one), find
/// and download a valid PDF through the fallback tiers, record the outcome in the ledger and
/// the manifest. Deferred works get a second pass at the end.
pub struct Pipeline {
    /// Shared with the task of each work in flight.
    core: Arc<Core>,
    records: Option<RecordWriter>,
}

/// A spawned task that is aborted when its handle is dropped, so that a run that returns
/// early (a ledger error) leaves no work running behind it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

/// How a run stops: the caller's shutdown, and the cancellation that it (or a fatal
/// error) sends to the works in flight. Cancellation is cooperative: intake stops and each
/// work in flight abandons its fetch, but ledger calls always run to the end (a
/// transaction dropped halfway would keep SQLite's write lock).
struct Stop<'s, F> {
    shutdown: Pin<&'s mut F>,
    /// The shutdown has completed.
    interrupted: bool,
    cancel_tx: watch::Sender<bool>,
    cancel: watch::Receiver<bool>,
}

impl<F: Future<Output = ()>> Stop<'_, F> {
    /// The shutdown completed: nothing new starts, the works in flight stop.
    fn interrupt(&mut self) {
        self.interrupted = true;
        self.cancel();
    }

    /// The works in flight stop (a shutdown, or a fatal error).
    fn cancel(&self) {
        let _ = self.cancel_tx.send(true);
    }
}

/// What the run has recorded so far, and whom to tell.
struct Books<'p, P> {
    summary: SummaryRecord,
    counts: Progress,
    progress: &'p P,
}

/// What the first pass leaves: the works for the second, who put them off, and how many
/// input lines were unusable.
struct FirstPass {
    later: Vec<Later>,
    hints: SourceHints,
    input_errors: u64,
    filtered: BTreeMap<Skip, u64>,
}

/// The second pass's plan: the deferred works in the order they go, each with when (none:
/// it stays deferred) and its provider's hint.
struct Plan {
    start: Instant,
    works: Vec<(Option<Instant>, Option<Instant>, Later)>,
}

impl Pipeline {
    /// A pipeline over `stack`'s services; `ledger` is `None` when idempotency is off.
    pub fn new(
        config: PipelineConfig,
        stack: &Stack,
        ledger: Option<Ledger>,
        manifest: SharedManifest,
    ) -> Result<Pipeline, PipelineError> {
        Ok(Pipeline {
            core: Arc::new(Core::new(config, stack, ledger, manifest)?),
            records: None,
        })
    }

    /// The writer of the stack's attempt records: flushed before the summary line, so that
    /// the summary stays the manifest's last line when the records go there too.
    pub fn with_records(mut self, records: RecordWriter) -> Self {
        self.records = Some(records);
        self
    }

    /// Runs every work of `works` (bad input lines are counted and skipped), then a second
    /// pass over the deferred ones: each is tried again once its provider's hint has passed,
    /// waiting at most [`second_pass_max_wait`](PipelineConfig::second_pass_max_wait); one
    /// expected back later stays deferred for the next run (see
    /// [`NO_HINT_WAIT`](super::NO_HINT_WAIT)). `progress` is called after each work. When `shutdown`
    /// completes, no new work starts, the works in flight abandon their downloads (partial
    /// files removed, leases released so a re-run picks them up at once), deferred works
    /// are recorded as deferred, and the summary says `interrupted`.
    ///
    /// A run that fails (a ledger or manifest error) gives back every lease it holds before
    /// returning the error, so that a re-run, here or elsewhere, need not wait for them.
    pub async fn run<S, P, F>(&self, works: S, progress: P, shutdown: F) -> Result<SummaryRecord, PipelineError>
    where
        S: Stream<Item = Result<Work, LineError>>,
        P: Fn(&Progress),
        F: Future<Output = ()>,
    {
        let result = self.run_inner(works, progress, shutdown).await;
        // the resolver answers still waiting (a run that failed keeps what it learned)
        self.core.fallback.flush_answers().await;
        let result = match result {
            // what was downloaded before the error is still recorded, before the leases go back
            Err(e) => {
                if let Err(also) = self.core.finisher.flush().await {
                    tracing::warn!("while stopping: {also}");
                }
                Err(e)
            }
            ok => ok,
        };
        if let (Err(e), Some(ledger)) = (&result, &self.core.ledger) {
            lock(&self.core.held).clear();
            match ledger.release_all(&self.core.config.worker_id).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(leases = n, "gave back this worker's leases after a fatal error: {e}"),
                Err(release) => tracing::warn!(
                    "could not give back this worker's leases after a fatal error ({release}); \
                     a re-run on this host takes them back at once, elsewhere after their TTL"
                ),
            }
        }
        result
    }

    async fn run_inner<S, P, F>(&self, works: S, progress: P, shutdown: F) -> Result<SummaryRecord, PipelineError>
    where
        S: Stream<Item = Result<Work, LineError>>,
        P: Fn(&Progress),
        F: Future<Output = ()>,
    {
        let started = Instant::now();
        if let Some(ledger) = &self.core.ledger {
            let now = ledger.clock().now_ms();
            self.core
                .run_started_ms
                .store(now, std::sync::atomic::Ordering::Relaxed);
        }
        self.core.finisher.start();
        self.reconcile().await?;
        let (cancel_tx, cancel) = watch::channel(false);
        let mut stop = Stop {
            shutdown: std::pin::pin!(shutdown),
            interrupted: false,
            cancel_tx,
            cancel,
        };
        let mut books = Books {
            summary: SummaryRecord::default(),
            counts: Progress::default(),
            progress: &progress,
        };
        // Leases are renewed by a task of their own: awaited in a pass, a heartbeat waiting
        // for SQLite's write lock would stop the claims that hold it from progressing.
        let (stop_heartbeat, heartbeat) = self.core.spawn_heartbeat();
        let (stop_syncing, syncing) = self.core.spawn_manifest_sync();
        let rates = self.core.learner().map(|learner| {
            RateLog::spawn(
                learner.clone(),
                self.core.manifest.clone(),
                self.core.config.run_id.clone(),
                RATE_LOG_EVERY,
            )
        });
        let first = self.first_pass(works, &mut books, &mut stop).await;
        // the answers given so far, for the second pass to read (and kept after a failure)
        self.core.fallback.flush_answers().await;
        let first = first?;
        if !stop.interrupted && !first.later.is_empty() {
            let (leased, rest): (Vec<Later>, Vec<Later>) = first
                .later
                .into_iter()
                .partition(|l| l.reason == ReasonCode::LeasedElsewhere);
            if !leased.is_empty() {
                self.after_siblings(leased, &mut books, &mut stop).await?;
            }
            let plan = self.plan(rest, &first.hints);
            self.second_pass(plan, &mut books, &mut stop).await?;
        }
        self.core.fallback.flush_answers().await;
        // every download recorded (durable first) before the leases stop being renewed
        let finished = self.core.finisher.flush().await;
        let _ = stop_heartbeat.send(true);
        let _ = heartbeat.await;
        finished?;
        let _ = stop_syncing.send(true);
        let _ = syncing.await;
        let mut summary = books.summary;
        summary.input_errors = first.input_errors;
        summary.filtered = first.filtered;
        summary.interrupted = stop.interrupted;
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        summary.add_resolver_counts(&self.core.fallback.take_resolver_counts());
        // the rates as they end, before the summary (the manifest's last line of a run)
        if let Some(rates) = rates {
            rates.stop().await;
        }
        if let Some(records) = &self.records {
            if let Err(e) = records.flush().await {
                tracing::warn!("attempt records were not all written: {e}");
            }
        }
        let mut manifest = lock(&self.core.manifest);
        manifest.write(&ManifestLine::summary(&self.core.config.run_id, summary.clone()))?;
        manifest.flush()?;
        Ok(summary)
    }

    /// Takes back the work of a worker that stopped without finishing.
    async fn reconcile(&self) -> Result<(), LedgerError> {
        let Some(ledger) = &self.core.ledger else {
            return Ok(());
        };
        let fixed = ledger.reconcile().await?;
        if fixed.leases_reclaimed > 0 || fixed.ops_abandoned > 0 {
            tracing::info!(
                leases = fixed.leases_reclaimed,
                ops = fixed.ops_abandoned,
                "took back the work of a worker that stopped without finishing"
            );
        }
        Ok(())
    }

    /// Every work of the input once (a repeated id is dropped, a bad line counted), each in
    /// a task of its own as the crawl frontier gives it a worker slot (see frontier.rs).
    /// Deferred works and works leased elsewhere are kept for later. A fatal error cancels
    /// the pass like a shutdown: the works in flight give their leases back as they stop
    /// (for at most [`FATAL_DRAIN`]), then the error is returned.
    async fn first_pass<S, P, F>(
        &self,
        works: S,
        books: &mut Books<'_, P>,
        stop: &mut Stop<'_, F>,
    ) -> Result<FirstPass, PipelineError>
    where
        S: Stream<Item = Result<Work, LineError>>,
        P: Fn(&Progress),
        F: Future<Output = ()>,
    {
        let mut seen: HashSet<String> = HashSet::new();
        let mut input_errors = 0u64;
        let mut filtered: BTreeMap<Skip, u64> = BTreeMap::new();
        let filter = &self.core.config.filter;
        let mut later: Vec<Later> = Vec::new();
        let mut hints = SourceHints::default();
        let mut fatal: Option<PipelineError> = None;
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<WorkRecord>>();
        {
            let works = works
                .filter_map(|item| {
                    // left out before the dedup set, which then holds only the kept works
                    let kept = match item {
                        Ok(work) => match filter.skips(&work) {
                            Some(skip) => {
                                *filtered.entry(skip).or_default() += 1;
                                None
                            }
                            None => Some(Ok(work)),
                        },
                        Err(e) => Some(Err(e)),
                    };
                    std::future::ready(kept.and_then(|item| once(item, &mut seen, &mut input_errors)))
                })
                // what the ledger has settled is skipped a batch at a time, not claimed one
                // by one: a rerun over millions of done works reads, it does not write
                .ready_chunks(SETTLED_BATCH)
                .map(|chunk| {
                    let (core, done) = (self.core.clone(), done_tx.clone());
                    async move {
                        let mut records = Vec::new();
                        let keep = core.skip_settled(chunk, &mut records).await;
                        core.fallback.read_answers_ahead(&keep).await;
                        if !records.is_empty() {
                            let _ = done.send(records);
                        }
                        stream::iter(keep)
                    }
                })
                // a few batches read at once, in order: the input is parsed while the
                // ledger answers (on the read pool's connections)
                .buffered(SETTLED_READS_AHEAD)
                .flatten()
                // claimed a group at a time, one group ahead of the works being started
                .ready_chunks(claim_group(self.core.config.workers))
                .map(|group| {
                    let core = self.core.clone();
                    async move {
                        core.claim_ahead(&group).await;
                        stream::iter(group)
                    }
                })
                .buffered(2)
                .flatten()
                .take_until(cancelled(stop.cancel.clone()));
            let cancel = stop.cancel.clone();
            let start = |w: Work, slot: Arc<Slot>| self.start(w, slot, cancel.clone());
            let workers = self.core.config.workers;
            let mut processing = std::pin::pin!(dispatch(works, self.core.frontier.clone(), workers, start));
            let drain = tokio::time::sleep(Duration::ZERO);
            let mut drain = std::pin::pin!(drain);
            loop {
                let failed = tokio::select! {
                    () = stop.shutdown.as_mut(), if !stop.interrupted => {
                        stop.interrupt();
                        None
                    }
                    () = &mut drain, if fatal.is_some() => break,
                    Some(records) = done_rx.recv(), if fatal.is_none() => records
                        .into_iter()
                        .try_for_each(|record| self.record(books, record))
                        .err()
                        .inspect(|e| tracing::error!("stopping the run: {e}")),
                    () = self.core.finisher.failed(), if fatal.is_none() => Some(match self.core.finisher.flush().await {
                        Err(e) => e,
                        Ok(()) => DurabilityError::FinisherStopped.into(),
                    })
                    .inspect(|e| tracing::error!("stopping the run: {e}")),
                    next = processing.next() => match next {
                        None => break,
                        Some(_) if fatal.is_some() => None,
                        Some(result) => result
                            .map_err(PipelineError::from)
                            .and_then(|processed| match processed {
                                Processed::Done(record) => self.record(books, record),
                                Processed::Cancelled => Ok(()),
                                Processed::Later(work) => {
                                    books.counts.deferred += 1;
                                    (books.progress)(&books.counts);
                                    hints.note(&work.by);
                                    later.push(work);
                                    Ok(())
                                }
                            })
                            .err()
                            .inspect(|e| tracing::error!("stopping the run: {e}")),
                    },
                };
                if let Some(e) = failed {
                    fatal = Some(e);
                    stop.cancel();
                    drain.as_mut().reset(Instant::now() + FATAL_DRAIN);
                }
            }
        }
        // leases claimed ahead for works a shutdown or a failure left unstarted
        match self.core.release_claimed_ahead().await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(leases = n, "gave back the leases claimed ahead for works not started"),
            Err(e) => tracing::warn!(
                "could not give back the leases claimed ahead for works not started ({e}); \
                 a re-run on this host takes them back at once, elsewhere after their TTL"
            ),
        }
        // the settled works of the last batches, read before the input ended
        while let (None, Ok(records)) = (&fatal, done_rx.try_recv()) {
            if let Err(e) = records.into_iter().try_for_each(|record| self.record(books, record)) {
                tracing::error!("stopping the run: {e}");
                fatal = Some(e);
            }
        }
        match fatal {
            Some(e) => Err(e),
            None => Ok(FirstPass {
                later,
                hints,
                input_errors,
                filtered,
            }),
        }
    }

    /// Starts `w`'s task (unless the run was cancelled before its slot came); the future
    /// gives its outcome. The task is aborted if the future is dropped.
    fn start(
        &self,
        w: Work,
        slot: Arc<Slot>,
        cancel: watch::Receiver<bool>,
    ) -> impl Future<Output = Result<Processed, LedgerError>> {
        let core = self.core.clone();
        // a work that got its slot after a shutdown is not started
        let stopped = *cancel.borrow();
        let task = (!stopped).then(|| {
            AbortOnDrop(tokio::spawn(async move {
                core.process(w, false, cancel, Some(&slot)).await
            }))
        });
        async move {
            let Some(task) = task else {
                return Ok(Processed::Cancelled);
            };
            match task.await {
                Ok(processed) => processed,
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                // the runtime is shutting down
                Err(_) => Ok(Processed::Cancelled),
            }
        }
    }

    /// Works leased by another worker: waits for each lease to end (polling the ledger),
    /// then takes the other worker's outcome or the work; no blanket sleep.
    async fn after_siblings<P, F>(
        &self,
        leased: Vec<Later>,
        books: &mut Books<'_, P>,
        stop: &mut Stop<'_, F>,
    ) -> Result<(), PipelineError>
    where
        P: Fn(&Progress),
        F: Future<Output = ()>,
    {
        let mut pending = leased.len();
        let cancel = stop.cancel.clone();
        let (deadline, waits) = self.core.after_siblings(leased, &cancel);
        let mut waits = std::pin::pin!(waits);
        let mut countdown = tokio::time::interval_at(Instant::now() + COUNTDOWN_EVERY, COUNTDOWN_EVERY);
        loop {
            tokio::select! {
                () = stop.shutdown.as_mut(), if !stop.interrupted => stop.interrupt(),
                _ = countdown.tick() => tracing::info!(
                    works = pending,
                    left_s = deadline.saturating_duration_since(Instant::now()).as_secs(),
                    "still waiting for other workers' leases; what is still held then is left to them"
                ),
                next = waits.next() => match next {
                    None => return Ok(()),
                    Some(record) => {
                        pending -= 1;
                        books.counts.deferred = books.counts.deferred.saturating_sub(1);
                        self.record(books, record?)?;
                    }
                },
            }
        }
    }

    /// The second pass's plan: each deferred work waits for its provider's hint, in hint
    /// order, up to the maximum wait from now; those expected back later stay deferred (at
    /// the end).
    fn plan(&self, later: Vec<Later>, hints: &SourceHints) -> Plan {
        let start = Instant::now();
        let max_wait = self.core.config.second_pass_max_wait;
        let mut works: Vec<(Option<Instant>, Option<Instant>, Later)> = later
            .into_iter()
            .map(|l| {
                let hint = hints.work_hint(&l.by);
                (second_attempt_at(start, hint, max_wait), hint, l)
            })
            .collect();
        // those that go first, by time; those that stay deferred at the end
        works.sort_by_key(|(at, _, _)| (at.is_none(), *at));
        let going = works.iter().filter(|(at, _, _)| at.is_some()).count();
        if let Some(first) = works.first().and_then(|(at, _, _)| *at) {
            tracing::info!(
                works = going,
                wait_ms = first.saturating_duration_since(start).as_millis() as u64,
                max_wait_ms = max_wait.as_millis() as u64,
                "second pass over deferred works once their providers accept again"
            );
        }
        Plan { start, works }
    }

    /// Carries out `plan`: each work, at its time, is tried once more; one that stays
    /// deferred, or every work left when the run is interrupted, is recorded as deferred.
    async fn second_pass<P, F>(
        &self,
        plan: Plan,
        books: &mut Books<'_, P>,
        stop: &mut Stop<'_, F>,
    ) -> Result<(), PipelineError>
    where
        P: Fn(&Progress),
        F: Future<Output = ()>,
    {
        let max_wait = self.core.config.second_pass_max_wait;
        let mut pending = plan.works.into_iter();
        for (at, hint, l) in pending.by_ref() {
            books.counts.deferred = books.counts.deferred.saturating_sub(1);
            let Some(at) = at.filter(|_| !stop.interrupted) else {
                let record = if stop.interrupted {
                    // stopped while waiting for the leases: nothing more is asked
                    self.settle_later(&l.work, l.reason, l.detail)
                } else {
                    self.beyond_max_wait(l, hint, plan.start, max_wait)
                };
                self.record(books, record)?;
                if stop.interrupted {
                    break;
                }
                continue;
            };
            let record = self.second_attempt(l, at, stop).await?;
            self.record(books, record)?;
            if stop.interrupted {
                break;
            }
        }
        for (_, _, l) in pending {
            books.counts.deferred = books.counts.deferred.saturating_sub(1);
            let record = self.settle_later(&l.work, l.reason, l.detail);
            self.record(books, record)?;
        }
        Ok(())
    }

    /// Waits until `at`, then tries `l` once more; deferred again, or interrupted, it is
    /// recorded as deferred.
    async fn second_attempt<F>(
        &self,
        l: Later,
        at: Instant,
        stop: &mut Stop<'_, F>,
    ) -> Result<WorkRecord, PipelineError>
    where
        F: Future<Output = ()>,
    {
        if at > Instant::now() {
            tracing::info!(
                work = %l.work.id,
                wait_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64,
                "waiting for the provider to accept again before the second attempt"
            );
            tokio::select! {
                () = stop.shutdown.as_mut() => stop.interrupt(),
                () = tokio::time::sleep_until(at) => {}
            }
            if stop.interrupted {
                return Ok(self.settle_later(&l.work, l.reason, l.detail));
            }
        }
        let second = {
            let mut pass = std::pin::pin!(self.core.process(l.work.clone(), true, stop.cancel.clone(), None));
            loop {
                tokio::select! {
                    () = stop.shutdown.as_mut(), if !stop.interrupted => stop.interrupt(),
                    r = &mut pass => break r?,
                }
            }
        };
        Ok(match second {
            Processed::Done(record) => record,
            Processed::Later(again) => self.settle_later(&again.work, again.reason, again.detail),
            Processed::Cancelled => self.settle_later(&l.work, l.reason, l.detail),
        })
    }

    /// A work whose provider expects us back after the second pass's maximum wait: it stays
    /// deferred (the ledger already says so) and is not asked again in this run.
    fn beyond_max_wait(&self, l: Later, hint: Option<Instant>, start: Instant, max_wait: Duration) -> WorkRecord {
        let after = hint.map_or(Duration::ZERO, |at| at.saturating_duration_since(start));
        tracing::info!(
            work = %l.work.id,
            after_s = after.as_secs(),
            "left deferred for the next run: its provider expects us back after the second pass's maximum wait"
        );
        let detail = format!(
            "{}; the provider expects us back in {} s, after the second pass's maximum wait of {} s \
             (--second-pass-max-wait); a later run will try again",
            l.detail,
            after.as_secs_f64().ceil() as u64,
            max_wait.as_secs()
        );
        self.settle_later(&l.work, l.reason, detail)
    }

    fn settle_later(&self, work: &Work, reason: ReasonCode, detail: String) -> WorkRecord {
        let outcome = if reason == ReasonCode::LeasedElsewhere {
            Outcome::Skipped
        } else {
            Outcome::Deferred
        };
        WorkRecord {
            reason: Some(reason),
            detail: Some(detail),
            ..WorkRecord::new(work.id.as_str(), outcome)
        }
    }

    fn record<P: Fn(&Progress)>(&self, books: &mut Books<'_, P>, record: WorkRecord) -> Result<(), PipelineError> {
        let counts = &mut books.counts;
        books.summary.add(&record);
        counts.done += 1;
        match record.outcome {
            Some(Outcome::Downloaded) => {
                counts.downloaded += 1;
                counts.bytes += record.bytes.unwrap_or(0);
            }
            Some(Outcome::Skipped) => counts.skipped += 1,
            Some(Outcome::Deferred) => counts.deferred += 1,
            Some(Outcome::Failed) | None => counts.failed += 1,
        }
        lock(&self.core.manifest).write(&ManifestLine::work(&self.core.config.run_id, record))?;
        (books.progress)(counts);
        Ok(())
    }
}

/// The work of an input line, the first time its id comes; a bad line is counted.
fn once(item: Result<Work, LineError>, seen: &mut HashSet<String>, input_errors: &mut u64) -> Option<Work> {
    match item {
        Ok(work) if seen.insert(work.id.clone()) => Some(work),
        Ok(work) => {
            tracing::warn!(work = %work.id, "the same work appears twice in the input; once is enough");
            None
        }
        Err(e) => {
            tracing::warn!("skipping input {e}");
            *input_errors += 1;
            None
        }
    }
}
