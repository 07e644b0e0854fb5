//! [`Pipeline`]: works in, outcomes out, with the ledger, the manifest and a second pass.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{Stream, StreamExt};
use tokio::time::Instant;

use super::fallback::{Fallback, TriedUrls};
use super::finish::Finisher;
use super::frontier::{Dispatch, Frontier, Slot};
use super::second_pass::{second_attempt_at, SourceHints};
use super::work::{cancelled, Later, Processed};
use super::FallbackConfig;
use crate::context::OperationType;
use crate::download::DownloadOptions;
use crate::layers::telemetry::{RecordWriter, Redactor};
use crate::ledger::{JobId, Ledger, LedgerError};
use crate::manifest::{ManifestLine, Outcome, SharedManifest, SummaryRecord, WorkRecord};
use crate::reason::ReasonCode;
use crate::resolvers::{ResolveContext, ResolverConfig};
use crate::service::{HttpService, Stack};
use crate::works::{LineError, Work};

/// After a fatal error, how long the works in flight get to stop and give their leases
/// back before the run returns the error.
const FATAL_DRAIN: Duration = Duration::from_secs(10);

/// How often a run waiting for other workers' leases says how long it may still wait.
const COUNTDOWN_EVERY: Duration = Duration::from_secs(10);

/// What a [`Pipeline`] needs besides the stack, the ledger and the manifest.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The output folder.
    pub out_dir: PathBuf,
    /// This run's id (on every manifest line and ledger job).
    pub run_id: String,
    /// This worker's name in the ledger (unique per process).
    pub worker_id: String,
    /// Works processed at once. A work waiting for a host that is not ready (the crawl
    /// frontier) gives its slot to another meanwhile: up to four times as many works
    /// more (at least 64) may wait so, their leases held.
    pub workers: usize,
    /// Tiers and budgets.
    pub fallback: FallbackConfig,
    /// Resolver base URLs and contact address.
    pub resolvers: ResolverConfig,
    /// Download limits.
    pub download: DownloadOptions,
    /// How long a work's lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// The longest the second pass waits for the providers of deferred works to accept
    /// again ([`DEFAULT_SECOND_PASS_MAX_WAIT`](super::DEFAULT_SECOND_PASS_MAX_WAIT) by
    /// default); works expected back later stay deferred for the next run. Zero: no wait.
    pub second_pass_max_wait: Duration,
    /// Re-hash (SHA-256) the file of a work the ledger records as downloaded before
    /// skipping it; off by default, as it reads every file. The file's presence and size
    /// are always checked: a work whose file is missing or changed is downloaded again.
    pub verify_existing: bool,
}

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

/// A failure that stops the run (a single work's failure does not).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The ledger could not be used.
    #[error("the ledger failed: {0}")]
    Ledger(#[from] LedgerError),
    /// The manifest could not be written.
    #[error("cannot write the manifest: {0}")]
    Manifest(#[from] std::io::Error),
    /// The configuration is not usable.
    #[error("{0}")]
    Config(String),
    /// Downloaded files could not be forced to disk (`--durability batch`); they are not
    /// recorded as downloaded.
    #[error("{0}")]
    Durability(String),
}

/// The download pipeline: for every work, claim it in the ledger (when there is one), find
/// and download a valid PDF through the fallback tiers, record the outcome in the ledger and
/// the manifest. Deferred works get a second pass at the end.
pub struct Pipeline {
    /// Shared with the task of each work in flight.
    pub(super) core: Arc<Core>,
    pub(super) records: Option<RecordWriter>,
}

/// What a work's task needs: each work runs as a task of its own, so that the works in
/// flight spread over the runtime's threads and one work's CPU time (hashing, checks,
/// JSON) does not hold up the others.
pub(super) struct Core {
    pub(super) config: PipelineConfig,
    pub(super) fallback: Fallback,
    pub(super) resolve: ResolveContext,
    pub(super) download: HttpService,
    pub(super) ledger: Option<Ledger>,
    pub(super) manifest: SharedManifest,
    pub(super) tried: TriedUrls,
    pub(super) held: Arc<Mutex<HashSet<JobId>>>,
    pub(super) redactor: Redactor,
    /// The run's worker slots and the hosts' turns.
    pub(super) frontier: Arc<Frontier>,
    /// Makes downloaded works durable and FINALIZED, in groups, off the works' path.
    pub(super) finisher: Finisher,
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
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("config", &self.core.config)
            .finish_non_exhaustive()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipeline {
    /// A pipeline over `stack`'s services; `ledger` is `None` when idempotency is off.
    pub fn new(
        config: PipelineConfig,
        stack: &Stack,
        ledger: Option<Ledger>,
        manifest: SharedManifest,
    ) -> Result<Pipeline, PipelineError> {
        if config.workers == 0 {
            return Err(PipelineError::Config("workers must be at least 1".into()));
        }
        let fallback = Fallback::new(config.fallback.clone()).map_err(|e| PipelineError::Config(e.to_string()))?;
        let resolve = ResolveContext {
            http: stack.service(OperationType::Resolve),
            config: Arc::new(config.resolvers.clone()),
            robots: (!config.resolvers.ignore_robots)
                .then(|| Arc::new(crate::resolvers::RobotsTxt::new(Some(stack.limiter().clone())))),
        };
        let held = Arc::new(Mutex::new(HashSet::new()));
        let finisher = Finisher::new(
            ledger.clone(),
            config.worker_id.clone(),
            config.download.durability,
            held.clone(),
        );
        Ok(Pipeline {
            core: Arc::new(Core {
                download: stack.service(OperationType::Download),
                finisher,
                fallback,
                resolve,
                ledger,
                manifest,
                tried: TriedUrls::default(),
                held,
                redactor: Redactor::default(),
                frontier: Arc::new(Frontier::new(
                    stack.limiter().clone(),
                    stack.cooldowns().clone(),
                    config.workers,
                )),
                config,
            }),
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
        self.core.finisher.start();
        if let Some(ledger) = &self.core.ledger {
            let fixed = ledger.reconcile().await?;
            if fixed.leases_reclaimed > 0 || fixed.ops_abandoned > 0 {
                tracing::info!(
                    leases = fixed.leases_reclaimed,
                    ops = fixed.ops_abandoned,
                    "took back the work of a worker that stopped without finishing"
                );
            }
        }
        let mut summary = SummaryRecord::default();
        let mut counts = Progress::default();
        let mut later: Vec<Later> = Vec::new();
        let mut hints = SourceHints::default();
        let mut seen: HashSet<String> = HashSet::new();
        let mut input_errors = 0u64;

        let mut shutdown = std::pin::pin!(shutdown);
        let mut interrupted = false;
        // Cancellation is cooperative: intake stops and each work in flight abandons its
        // fetch, but ledger calls always run to the end (a transaction dropped halfway would
        // keep SQLite's write lock).
        let (cancel_tx, cancel_rx) = tokio::sync::watch::channel(false);
        // Leases are renewed by a task of their own: awaited in the loop below, a heartbeat
        // waiting for SQLite's write lock would stop the claims that hold it from progressing.
        let (stop_heartbeat, heartbeat) = self.core.spawn_heartbeat();
        let (stop_syncing, syncing) = self.core.spawn_manifest_sync();
        {
            let works = works.filter_map(|item| {
                let keep = match item {
                    Ok(work) if seen.insert(work.id.clone()) => Some(work),
                    Ok(work) => {
                        tracing::warn!(work = %work.id, "the same work appears twice in the input; once is enough");
                        None
                    }
                    Err(e) => {
                        tracing::warn!("skipping input {e}");
                        input_errors += 1;
                        None
                    }
                };
                std::future::ready(keep)
            });
            let works = works.take_until(cancelled(cancel_rx.clone()));
            // The crawl frontier: each work starts once a worker slot is free, and gives
            // its slot back while it waits for a host that is not ready (see frontier.rs).
            let start = |w: Work, slot: Arc<Slot>| {
                let (core, cancel) = (self.core.clone(), cancel_rx.clone());
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
            };
            let mut processing = std::pin::pin!(Dispatch::new(
                works,
                self.core.frontier.clone(),
                self.core.config.workers,
                start
            ));
            // A fatal error cancels the run like a shutdown: the works in flight give their
            // leases back as they stop (for at most FATAL_DRAIN), then the error is returned.
            let mut fatal: Option<PipelineError> = None;
            let drain = tokio::time::sleep(Duration::ZERO);
            let mut drain = std::pin::pin!(drain);
            loop {
                tokio::select! {
                    () = &mut shutdown, if !interrupted => {
                        interrupted = true;
                        let _ = cancel_tx.send(true);
                    }
                    () = &mut drain, if fatal.is_some() => break,
                    () = self.core.finisher.failed(), if fatal.is_none() => {
                        let e = match self.core.finisher.flush().await {
                            Err(e) => e,
                            Ok(()) => PipelineError::Durability("the finisher stopped".into()),
                        };
                        fatal = Some(e);
                        let _ = cancel_tx.send(true);
                        drain.as_mut().reset(Instant::now() + FATAL_DRAIN);
                    }
                    next = processing.next() => match next {
                        None => break,
                        Some(_) if fatal.is_some() => {}
                        Some(result) => {
                            let step = result.map_err(PipelineError::from).and_then(|processed| match processed {
                                Processed::Done(record) => self.record(record, &mut summary, &mut counts, &progress),
                                Processed::Cancelled => Ok(()),
                                Processed::Later(work) => {
                                    counts.deferred += 1;
                                    progress(&counts);
                                    hints.note(&work.by);
                                    later.push(work);
                                    Ok(())
                                }
                            });
                            if let Err(e) = step {
                                tracing::error!("stopping the run: {e}");
                                fatal = Some(e);
                                let _ = cancel_tx.send(true);
                                drain.as_mut().reset(Instant::now() + FATAL_DRAIN);
                            }
                        }
                    },
                }
            }
            if let Some(e) = fatal {
                return Err(e);
            }
        }
        if !interrupted && !later.is_empty() {
            // Works leased by another worker: wait for each lease to end (polling the ledger),
            // then take the other worker's outcome or the work; no blanket sleep.
            let (leased, rest): (Vec<Later>, Vec<Later>) = std::mem::take(&mut later)
                .into_iter()
                .partition(|l| l.reason == ReasonCode::LeasedElsewhere);
            later = rest;
            if !leased.is_empty() {
                let mut pending = leased.len();
                let (deadline, waits) = self.core.after_siblings(leased, &cancel_rx);
                let mut waits = std::pin::pin!(waits);
                let mut countdown = tokio::time::interval_at(Instant::now() + COUNTDOWN_EVERY, COUNTDOWN_EVERY);
                loop {
                    tokio::select! {
                        () = &mut shutdown, if !interrupted => {
                            interrupted = true;
                            let _ = cancel_tx.send(true);
                        }
                        _ = countdown.tick() => tracing::info!(
                            works = pending,
                            left_s = deadline.saturating_duration_since(Instant::now()).as_secs(),
                            "still waiting for other workers' leases; what is still held then is left to them"
                        ),
                        next = waits.next() => match next {
                            None => break,
                            Some(record) => {
                                pending -= 1;
                                counts.deferred = counts.deferred.saturating_sub(1);
                                self.record(record?, &mut summary, &mut counts, &progress)?;
                            }
                        },
                    }
                }
            }
            // Each work waits for its provider's hint, in hint order, up to the maximum wait
            // from here.
            let start = Instant::now();
            let max_wait = self.core.config.second_pass_max_wait;
            let mut planned: Vec<(Option<Instant>, Option<Instant>, Later)> = std::mem::take(&mut later)
                .into_iter()
                .map(|l| {
                    let hint = hints.work_hint(&l.by);
                    (second_attempt_at(start, hint, max_wait), hint, l)
                })
                .collect();
            // those that go first, by time; those that stay deferred at the end
            planned.sort_by_key(|(at, _, _)| (at.is_none(), *at));
            let going = planned.iter().filter(|(at, _, _)| at.is_some()).count();
            if let Some(first) = planned.first().and_then(|(at, _, _)| *at) {
                tracing::info!(
                    works = going,
                    wait_ms = first.saturating_duration_since(start).as_millis() as u64,
                    max_wait_ms = max_wait.as_millis() as u64,
                    "second pass over deferred works once their providers accept again"
                );
            }
            let mut pending = planned.into_iter();
            for (at, hint, l) in pending.by_ref() {
                counts.deferred = counts.deferred.saturating_sub(1);
                if interrupted {
                    // stopped while waiting for the leases: nothing more is asked
                    let record = self.settle_later(&l.work, l.reason, l.detail);
                    self.record(record, &mut summary, &mut counts, &progress)?;
                    break;
                }
                let Some(at) = at else {
                    let record = self.beyond_max_wait(l, hint, start, max_wait);
                    self.record(record, &mut summary, &mut counts, &progress)?;
                    continue;
                };
                if at > Instant::now() {
                    tracing::info!(
                        work = %l.work.id,
                        wait_ms = at.saturating_duration_since(Instant::now()).as_millis() as u64,
                        "waiting for the provider to accept again before the second attempt"
                    );
                    tokio::select! {
                        () = &mut shutdown => {
                            interrupted = true;
                            let _ = cancel_tx.send(true);
                        }
                        () = tokio::time::sleep_until(at) => {}
                    }
                    if interrupted {
                        let record = self.settle_later(&l.work, l.reason, l.detail);
                        self.record(record, &mut summary, &mut counts, &progress)?;
                        break;
                    }
                }
                let second = {
                    let mut pass = std::pin::pin!(self.core.process(l.work.clone(), true, cancel_rx.clone(), None));
                    loop {
                        tokio::select! {
                            () = &mut shutdown, if !interrupted => {
                                interrupted = true;
                                let _ = cancel_tx.send(true);
                            }
                            r = &mut pass => break r?,
                        }
                    }
                };
                let record = match second {
                    Processed::Done(record) => record,
                    Processed::Later(again) => self.settle_later(&again.work, again.reason, again.detail),
                    Processed::Cancelled => self.settle_later(&l.work, l.reason, l.detail),
                };
                self.record(record, &mut summary, &mut counts, &progress)?;
                if interrupted {
                    break;
                }
            }
            for (_, _, l) in pending {
                counts.deferred = counts.deferred.saturating_sub(1);
                let record = self.settle_later(&l.work, l.reason, l.detail);
                self.record(record, &mut summary, &mut counts, &progress)?;
            }
        }
        // every download recorded (durable first) before the leases stop being renewed
        let finished = self.core.finisher.flush().await;
        let _ = stop_heartbeat.send(true);
        let _ = heartbeat.await;
        finished?;
        let _ = stop_syncing.send(true);
        let _ = syncing.await;
        summary.input_errors = input_errors;
        summary.interrupted = interrupted;
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
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

    fn record<P: Fn(&Progress)>(
        &self,
        record: WorkRecord,
        summary: &mut SummaryRecord,
        counts: &mut Progress,
        progress: &P,
    ) -> Result<(), PipelineError> {
        summary.add(&record);
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
        progress(counts);
        Ok(())
    }
}
