//! [`Core`], what the task of each work shares, and one work's way through the pipeline:
//! its ledger claim, its fetch, its outcome recorded; and the heartbeat that keeps the
//! leases of the works in flight.
//!
//! The pipeline is the only claimant of the ledger in the runner's path: a work is claimed
//! here ([`Core::claim`]) and nowhere else (the stack's idempotency layer runs without a
//! ledger of its own).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use tokio::time::Instant;

use super::config::PipelineConfig;
use super::error::ConfigError;
use super::fallback::{DeferredBy, Fallback, FetchEnv, FetchResult, TriedUrls};
use super::finish::{Finished, Finisher};
use super::frontier::{gated, Frontier, Slot};
use super::lock;
use crate::context::{OperationType, WorkId};
use crate::download::{file_stem, safe_join, Downloaded, Output};
use crate::layers::idempotency::derive_key;
use crate::layers::telemetry::Redactor;
use crate::ledger::{Claim, Job, JobId, JobResult, JobState, Ledger, LedgerError, NewJob};
use crate::manifest::{Outcome, SharedManifest, WorkRecord, MANIFEST_SYNC_EVERY};
use crate::reason::ReasonCode;
use crate::resolvers::{ResolveContext, RobotsTxt};
use crate::service::{HttpService, Stack};
use crate::works::{Candidate, Work};

/// What a work's task needs: each work runs as a task of its own, so that the works in
/// flight spread over the runtime's threads and one work's CPU time (hashing, checks,
/// JSON) does not hold up the others.
pub(super) struct Core {
    pub(super) config: PipelineConfig,
    pub(super) fallback: Fallback,
    resolve: ResolveContext,
    download: HttpService,
    pub(super) ledger: Option<Ledger>,
    pub(super) manifest: SharedManifest,
    tried: TriedUrls,
    /// The jobs whose leases this worker holds (renewed by the heartbeat).
    pub(super) held: Arc<Mutex<HashSet<JobId>>>,
    redactor: Redactor,
    /// The run's worker slots and the hosts' turns.
    pub(super) frontier: Arc<Frontier>,
    /// Makes downloaded works durable and FINALIZED, in groups, off the works' path.
    pub(super) finisher: Finisher,
    /// When the current run started, in ledger-clock milliseconds (`i64::MAX` before the
    /// first): a work another worker FAILED since then is not tried again in this run.
    pub(super) run_started_ms: AtomicI64,
    /// Jobs claimed ahead (see [`claim_ahead`](Core::claim_ahead)) whose works have not
    /// come to their claim yet, by idempotency key.
    claimed_ahead: Mutex<HashMap<String, Job>>,
}

pub(super) enum Processed {
    Done(WorkRecord),
    /// Abandoned by a shutdown; its lease is released.
    Cancelled,
    /// For the second pass: deferred, or leased by a live worker elsewhere.
    Later(Later),
}

/// A work waiting for the second pass.
pub(super) struct Later {
    pub(super) work: Work,
    pub(super) reason: ReasonCode,
    pub(super) detail: String,
    /// Who put it off, with their hints.
    pub(super) by: Vec<DeferredBy>,
}

/// How a work's claim ended: with its outcome already known, or with the work to fetch.
// (Made once per work and taken apart at once: boxing the larger variant would gain nothing.)
#[allow(clippy::large_enum_variant)]
enum Claimed {
    /// Settled without a fetch: skipped (downloaded before, found in place), or for later
    /// (leased by a live worker elsewhere).
    Settled(Processed),
    /// To fetch, under this job's lease (none without a ledger).
    Fetch(Option<JobId>),
}

impl Core {
    /// The core of a pipeline over `stack`'s services; `ledger` is `None` when idempotency
    /// is off.
    pub(super) fn new(
        config: PipelineConfig,
        stack: &Stack,
        ledger: Option<Ledger>,
        manifest: SharedManifest,
    ) -> Result<Core, ConfigError> {
        if config.workers == 0 {
            return Err(ConfigError::NoWorkers);
        }
        let fallback = Fallback::new(config.fallback.clone())?.with_ledger(ledger.clone());
        let resolve = ResolveContext {
            http: stack.service(OperationType::Resolve),
            config: Arc::new(config.resolvers.clone()),
            robots: (!config.resolvers.ignore_robots).then(|| Arc::new(RobotsTxt::new(Some(stack.limiter().clone())))),
            learner: stack.learner().cloned(),
        };
        let held = Arc::new(Mutex::new(HashSet::new()));
        let finisher = Finisher::new(
            ledger.clone(),
            config.worker_id.clone(),
            config.download.durability,
            held.clone(),
        );
        Ok(Core {
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
            run_started_ms: AtomicI64::new(i64::MAX),
            claimed_ahead: Mutex::default(),
            config,
        })
    }

    fn heartbeat_every(&self) -> Duration {
        (self.config.lease_ttl / 3).max(Duration::from_millis(100))
    }

    /// The stack's learner, if provider learning is on.
    pub(super) fn learner(&self) -> Option<&crate::layers::learning::Learner> {
        self.resolve.learner.as_ref()
    }

    pub(super) fn spawn_heartbeat(&self) -> (watch::Sender<bool>, JoinHandle<()>) {
        let Some(ledger) = self.ledger.clone() else {
            return spawn_every(None, || async {});
        };
        let (held, owner, ttl) = (self.held.clone(), self.config.worker_id.clone(), self.config.lease_ttl);
        spawn_every(Some(self.heartbeat_every()), move || {
            let jobs: Vec<JobId> = lock(&held).iter().copied().collect();
            let (ledger, owner) = (ledger.clone(), owner.clone());
            async move {
                if jobs.is_empty() {
                    return;
                }
                if let Err(e) = ledger.heartbeat(&owner, &jobs, ttl).await {
                    tracing::warn!("could not renew leases: {e}");
                }
            }
        })
    }

    /// Syncs the manifest to disk every [`MANIFEST_SYNC_EVERY`], off the lock and on the
    /// blocking pool; the lines are written out to the OS far more often (by the
    /// attempt-record writer), and the run's end flushes and syncs them all.
    pub(super) fn spawn_manifest_sync(&self) -> (watch::Sender<bool>, JoinHandle<()>) {
        let manifest = self.manifest.clone();
        spawn_every(Some(MANIFEST_SYNC_EVERY), move || {
            let sync = lock(&manifest).sync_handle();
            async move {
                let synced = match sync {
                    Ok(None) => return,
                    Ok(Some(sync)) => tokio::task::spawn_blocking(move || sync.sync())
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                    Err(e) => Err(e),
                };
                if let Err(e) = synced {
                    tracing::warn!("could not write the manifest to disk (will try again): {e}");
                }
            }
        })
    }

    pub(super) fn job_for(&self, work: &Work) -> NewJob {
        let work_id = WorkId::new(work.id.as_str());
        let canonical = match &work.doi {
            Some(doi) => format!("https://doi.org/{doi}"),
            None => format!("work:{}", work.id),
        };
        NewJob {
            run_id: self.config.run_id.clone(),
            key: derive_key(OperationType::Download, Some(&work_id), &format!("work:{}", work.id)),
            work_id,
            canonical_url: canonical,
        }
    }

    /// What is wrong with the file the ledger recorded for a FINALIZED job, if anything:
    /// missing, another size, or (with `verify_existing`) another SHA-256. `None` when it
    /// is as recorded, or when the job is not a download with a recorded file.
    async fn recorded_file_problem(&self, job: &Job) -> Option<String> {
        if job.state != JobState::Finalized {
            return None;
        }
        let name = job.result.path.as_deref()?;
        #[cfg(feature = "s3")]
        if let Output::Store(store) = &self.config.output {
            // the ledger is trusted (a HEAD per work would cost a request per work of every
            // rerun) unless --verify-existing: then the object's size is checked
            if !self.config.verify_existing {
                return None;
            }
            let recorded = job.result.bytes.and_then(|b| u64::try_from(b).ok());
            return match store.size(name).await {
                Ok(None) => Some("missing from the store".into()),
                Ok(Some(found)) if recorded.is_some_and(|r| r != found) => Some(format!(
                    "{found} bytes in the store, not the {} recorded",
                    recorded.unwrap_or(0)
                )),
                Ok(Some(_)) => None,
                Err(e) => Some(format!("unreadable in the store ({e})")),
            };
        }
        // a recorded path is a plain file name in the output folder; anything else is not ours
        let stem = name.strip_suffix(".pdf");
        let Some(path) = stem.and_then(|stem| safe_join(&self.config.out_dir, stem, "pdf")) else {
            return Some("recorded under an unusable name".into());
        };
        let found = match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Some("missing (not a file)".into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some("missing".into()),
            Err(e) => return Some(format!("unreadable ({e})")),
        };
        if let Some(recorded) = job.result.bytes.and_then(|b| u64::try_from(b).ok()) {
            if found != recorded {
                return Some(format!("{found} bytes, not the {recorded} recorded"));
            }
        }
        if !self.config.verify_existing {
            return None;
        }
        let recorded = job.result.sha256.clone()?;
        let hashed = tokio::task::spawn_blocking(move || sha256_file(&path))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match hashed {
            Ok(h) if h.eq_ignore_ascii_case(&recorded) => None,
            Ok(_) => Some("changed (its SHA-256 is not the one recorded)".into()),
            Err(e) => Some(format!("unreadable ({e})")),
        }
    }

    /// The SHA-256 and size of `<out>/<stem>.pdf` when it is there and passes the payload
    /// checks.
    async fn file_in_place(&self, stem: &str) -> Option<(String, u64)> {
        let path = safe_join(&self.config.out_dir, stem, "pdf")?;
        // one trip to the blocking pool: a missing file is found by the open
        let checked = tokio::task::spawn_blocking(move || check_file(&path)).await.ok()?;
        match checked {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("a file in place could not be read, downloading it again: {e}");
                None
            }
        }
    }

    /// One work's way: claimed (or found settled), fetched through the fallback tiers
    /// (abandoned when `cancel` fires, its lease given back), its outcome recorded in the
    /// ledger. In a first pass (`slot` given) each request waits for its host's turn in the
    /// crawl frontier; a deferred work is handed back for the second pass, except in one.
    pub(super) async fn process(
        &self,
        work: Work,
        second_pass: bool,
        cancel: watch::Receiver<bool>,
        slot: Option<&Arc<Slot>>,
    ) -> Result<Processed, LedgerError> {
        let started = Instant::now();
        let job = match self.claim(&work).await? {
            Claimed::Settled(processed) => {
                // not fetched here: what was read ahead for it is not needed
                self.fallback.forget_answers(&work);
                return Ok(processed);
            }
            Claimed::Fetch(job) => job,
        };
        let Some(result) = self.fetch(&work, slot, cancel, job).await? else {
            return Ok(Processed::Cancelled);
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.settle(work, result, job, second_pass, elapsed_ms).await
    }

    /// Claims `works` (the next ones of the input) in one group, so that each one's claim
    /// in [`process`](Core::process) is a lookup instead of a statement (SQLite: a write
    /// transaction and its WAL frames, the largest per-work cost of a bulk run). Each job
    /// leased here joins the held set at once (the heartbeat renews it until its work
    /// comes); one the group did not lease is claimed alone when its work comes, which says
    /// why (settled, busy elsewhere). What a run does not come to is given back by
    /// [`release_claimed_ahead`](Core::release_claimed_ahead). Without a ledger, nothing.
    pub(super) async fn claim_ahead(&self, works: &[Work]) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let jobs: Vec<NewJob> = works.iter().map(|w| self.job_for(w)).collect();
        let since = Some(self.run_started_ms.load(Ordering::Relaxed)).filter(|&t| t != i64::MAX);
        let leased = ledger
            .claim_group(&jobs, &self.config.worker_id, self.config.lease_ttl, since)
            .await;
        let leased: Vec<Job> = leased.into_iter().flatten().collect();
        if leased.is_empty() {
            return;
        }
        lock(&self.held).extend(leased.iter().map(|j| j.id));
        lock(&self.claimed_ahead).extend(leased.into_iter().map(|j| (j.key.as_str().to_owned(), j)));
    }

    /// Gives back the leases claimed ahead for works the run did not come to (a shutdown,
    /// a fatal error), with the attempt their claim counted; returns how many.
    pub(super) async fn release_claimed_ahead(&self) -> Result<usize, LedgerError> {
        let unused: Vec<Job> = lock(&self.claimed_ahead).drain().map(|(_, j)| j).collect();
        let Some(ledger) = &self.ledger else {
            return Ok(0);
        };
        let mut first_error = None;
        for job in &unused {
            let released = ledger.unclaim(job.id, &self.config.worker_id).await;
            lock(&self.held).remove(&job.id);
            if let Err(e) = released {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(unused.len()), Err)
    }

    /// Claims `work` in the ledger (when there is one), or, without a ledger, looks for its
    /// file. The ledger believes the disk: a downloaded work whose file is gone or changed
    /// is planned and claimed again; a file in place without a FINALIZED row is adopted.
    async fn claim(&self, work: &Work) -> Result<Claimed, LedgerError> {
        let stem = file_stem(work);
        let Some(ledger) = &self.ledger else {
            if self.in_output(&stem).await {
                return Ok(Claimed::Settled(Processed::Done(WorkRecord {
                    reason: Some(ReasonCode::AlreadyDownloaded),
                    path: Some(format!("{stem}.pdf")),
                    ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
                })));
            }
            return Ok(Claimed::Fetch(None));
        };
        let ahead = lock(&self.claimed_ahead).remove(self.job_for(work).key.as_str());
        let (claim, replanned) = match ahead {
            Some(job) => (Claim::Leased(job), false),
            None => self.claim_in(ledger, work).await?,
        };
        let job = match claim {
            Claim::Settled(job) if job.state == JobState::Failed => {
                return Ok(Claimed::Settled(Processed::Done(failed_elsewhere(work, &job))))
            }
            Claim::Settled(job) => return Ok(Claimed::Settled(Processed::Done(already_done(work, job)))),
            Claim::Busy(job) => {
                let owner = job.lease_owner.unwrap_or_default();
                return Ok(Claimed::Settled(Processed::Later(Later {
                    work: work.clone(),
                    reason: ReasonCode::LeasedElsewhere,
                    detail: format!("leased by {owner}"),
                    by: Vec::new(),
                })));
            }
            Claim::Leased(job) => job,
        };
        lock(&self.held).insert(job.id);
        // Only a work claimed before (by a run that stopped) can have left a file; not one
        // just found missing or changed (that one is fetched).
        if job.attempts > 1 && !replanned {
            if let Some(record) = self.adopt_in_place(work, &stem, job.id).await {
                return Ok(Claimed::Settled(Processed::Done(record)));
            }
        }
        Ok(Claimed::Fetch(Some(job.id)))
    }

    /// `works` without those the ledger has settled (FINALIZED or SKIPPED) with their file
    /// as recorded, or failed within the resolver cache's age for a reason that will not
    /// change (no candidates, not a PDF, robots: what the answers remembered would say
    /// again): one read per [`SETTLED_BATCH`](crate::ledger::SETTLED_BATCH) works instead of
    /// a claim each, which is what makes a rerun over a large input cheap. Each skipped
    /// one's record goes to `done`. Without a ledger, or when the read fails (the claims
    /// will then say why), all are kept.
    pub(super) async fn skip_settled(&self, works: Vec<Work>, done: &mut Vec<WorkRecord>) -> Vec<Work> {
        let Some(ledger) = &self.ledger else {
            return works;
        };
        let keys: Vec<_> = works.iter().map(|w| self.job_for(w).key).collect();
        let ttl = self.config.fallback.resolver_cache_ttl_secs;
        let since = (ttl > 0).then(|| {
            let ttl_ms = i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX);
            ledger.clock().now_ms().saturating_sub(ttl_ms)
        });
        let mut settled = match ledger.settled_or_failed_since(&keys, since).await {
            Ok(settled) => settled,
            Err(e) => {
                tracing::debug!("could not read which works are settled, claiming each: {e}");
                return works;
            }
        };
        let mut keep = Vec::with_capacity(works.len() - settled.len().min(works.len()));
        for (work, key) in works.into_iter().zip(keys) {
            match settled.remove(&key) {
                Some(job) if job.state == JobState::Failed => match definite_failure(&work, &job) {
                    Some(record) => done.push(record),
                    None => keep.push(work),
                },
                // a file found missing or changed is left to the claim, which plans it again
                Some(job) if self.recorded_file_problem(&job).await.is_none() => done.push(already_done(&work, job)),
                _ => keep.push(work),
            }
        }
        keep
    }

    /// The ledger's claim of `work`, and whether it was planned again first: a downloaded
    /// work whose file is gone or changed is planned and claimed again (once: a second
    /// settled claim means another worker has just downloaded it again).
    async fn claim_in(&self, ledger: &Ledger, work: &Work) -> Result<(Claim, bool), LedgerError> {
        let new_job = self.job_for(work);
        let (owner, ttl) = (&self.config.worker_id, self.config.lease_ttl);
        // several processes on one input try a failing work once between them
        let since = Some(self.run_started_ms.load(Ordering::Relaxed)).filter(|&t| t != i64::MAX);
        let claim = ledger.claim_unless_failed_since(&new_job, owner, ttl, since).await?;
        let Claim::Settled(job) = &claim else {
            return Ok((claim, false));
        };
        let Some(why) = self.recorded_file_problem(job).await else {
            return Ok((claim, false));
        };
        tracing::warn!(
            work = %work.id,
            path = job.result.path.as_deref().unwrap_or(""),
            "the file of a downloaded work is {why}: planning it again"
        );
        ledger.replan(job, &format!("file {why}")).await?;
        Ok((ledger.claim(&new_job, owner, ttl).await?, true))
    }

    /// A file in place without a FINALIZED row: downloaded by a run that stopped before
    /// the file's group was recorded. It passed the checks before its rename; checked again
    /// (a power loss may have cut it) and hashed, it is recorded (by the finisher), not
    /// fetched again.
    async fn adopt_in_place(&self, work: &Work, stem: &str, job: JobId) -> Option<WorkRecord> {
        let (sha256, bytes) = self.file_in_place(stem).await?;
        let path = self.config.out_dir.join(format!("{stem}.pdf"));
        let stored = match self.place(&path, &sha256).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(work = %work.id, "a file in place could not be put to the store, downloading it again: {e}");
                return None;
            }
        };
        let record = WorkRecord {
            reason: Some(ReasonCode::AlreadyDownloaded),
            detail: Some("found in place, checked and hashed; its run had stopped before recording it".into()),
            path: Some(format!("{stem}.pdf")),
            sha256: Some(sha256),
            bytes: Some(bytes),
            ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
        };
        let result = JobResult {
            outcome: Some(Outcome::Downloaded.as_str().to_owned()),
            ..job_result(&record)
        };
        self.finisher.submit(Finished {
            job: Some(job),
            result,
            path,
            adopted: true,
            stored,
        });
        Some(record)
    }

    /// Whether `<stem>.pdf` is in the output (the folder, or the store: one HEAD), for a
    /// run without a ledger.
    async fn in_output(&self, stem: &str) -> bool {
        match &self.config.output {
            Output::Folder => self.config.out_dir.join(format!("{stem}.pdf")).is_file(),
            #[cfg(feature = "s3")]
            Output::Store(store) => match store.size(&format!("{stem}.pdf")).await {
                Ok(found) => found.is_some(),
                Err(e) => {
                    tracing::warn!("could not look for {stem}.pdf in {}: {e}", store.url());
                    false
                }
            },
        }
    }

    /// Puts a checked file where finished PDFs go: nothing to do for the folder (it is in
    /// place); for a store, the file is put (its SHA-256 as metadata) and, once the store
    /// acknowledged it, removed from the local folder. `Ok(true)` when it went to a store.
    /// On an error the file stays, for the next run to put.
    #[cfg_attr(not(feature = "s3"), allow(clippy::unused_async))]
    async fn place(&self, path: &std::path::Path, sha256: &str) -> Result<bool, String> {
        match &self.config.output {
            Output::Folder => {
                let _ = (path, sha256);
                Ok(false)
            }
            #[cfg(feature = "s3")]
            Output::Store(store) => {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| format!("{} has no file name", path.display()))?;
                store
                    .put_file(path, &name, sha256)
                    .await
                    .map_err(|e| format!("putting {name} to {}: {e}", store.url()))?;
                if let Err(e) = tokio::fs::remove_file(path).await {
                    tracing::warn!(path = %path.display(), "could not remove a file put to the store: {e}");
                }
                Ok(true)
            }
        }
    }

    /// Fetches `work` through the fallback tiers; `None` when `cancel` fired first (the
    /// partial files are gone with the fetch, and the work's lease is given back).
    async fn fetch(
        &self,
        work: &Work,
        slot: Option<&Arc<Slot>>,
        cancel: watch::Receiver<bool>,
        job: Option<JobId>,
    ) -> Result<Option<FetchResult>, LedgerError> {
        // In a run's first pass each request waits for its host's turn in the crawl
        // frontier, the work's worker slot given back meanwhile.
        let gated = slot.map(|slot| {
            let resolve = ResolveContext {
                http: gated(&self.resolve.http, slot),
                config: self.resolve.config.clone(),
                robots: self.resolve.robots.clone(),
                learner: self.resolve.learner.clone(),
            };
            (resolve, gated(&self.download, slot))
        });
        let (resolve, download) = match &gated {
            Some((resolve, download)) => (resolve, download),
            None => (&self.resolve, &self.download),
        };
        let env = FetchEnv {
            resolve,
            download,
            out_dir: &self.config.out_dir,
            tried: &self.tried,
            options: &self.config.download,
        };
        // Boxed as `Send` here, where its lifetimes are concrete: left to the task spawn, the
        // compiler fails to prove the fetch `Send` (rust-lang/rust#102211).
        let fetch: futures_util::future::BoxFuture<'_, FetchResult> = Box::pin(self.fallback.fetch(work, env));
        tokio::select! {
            r = fetch => Ok(Some(r)),
            () = cancelled(cancel) => {
                if let (Some(ledger), Some(job)) = (&self.ledger, job) {
                    let released = ledger.release(job, &self.config.worker_id).await;
                    lock(&self.held).remove(&job);
                    released?;
                }
                Ok(None)
            }
        }
    }

    /// Records the fetch's outcome: a download goes to the finisher (made durable and
    /// FINALIZED in a group, its lease held until then); a failure or a deferral is
    /// finished in the ledger here. A deferral in a first pass is handed back for the
    /// second.
    async fn settle(
        &self,
        work: Work,
        result: FetchResult,
        job: Option<JobId>,
        second_pass: bool,
        elapsed_ms: u64,
    ) -> Result<Processed, LedgerError> {
        let not_done = |outcome, reason, detail, attempts, http_status| WorkRecord {
            reason: Some(reason),
            detail: Some(detail),
            elapsed_ms,
            attempts,
            http_status,
            ..WorkRecord::new(work.id.as_str(), outcome)
        };
        let (record, state, by) = match result {
            FetchResult::Downloaded {
                file,
                candidate,
                attempts,
            } => {
                let record = WorkRecord {
                    elapsed_ms,
                    attempts,
                    ..self.downloaded(&work, &file, candidate)
                };
                let stored = match self.place(&file.path, &file.sha256).await {
                    Ok(stored) => stored,
                    Err(detail) => {
                        // not FINALIZED: FAILED (retried by the next run, which puts the
                        // file left in the state folder, or downloads it again)
                        let record = WorkRecord {
                            outcome: Some(Outcome::Failed),
                            reason: Some(ReasonCode::IoError),
                            detail: Some(detail),
                            ..record
                        };
                        if let (Some(ledger), Some(job)) = (&self.ledger, job) {
                            let finished = ledger
                                .finish(job, &self.config.worker_id, JobState::Failed, &job_result(&record))
                                .await;
                            lock(&self.held).remove(&job);
                            finished?;
                        }
                        return Ok(Processed::Done(record));
                    }
                };
                // made durable and recorded by the finisher, in a group, while this work's
                // slot goes to the next one (its lease stays held until then)
                self.finisher.submit(Finished {
                    job,
                    result: job_result(&record),
                    path: file.path,
                    adopted: false,
                    stored,
                });
                return Ok(Processed::Done(record));
            }
            FetchResult::Failed {
                reason,
                detail,
                attempts,
                status,
            } => (
                not_done(Outcome::Failed, reason, detail, attempts, status),
                JobState::Failed,
                None,
            ),
            FetchResult::Deferred {
                reason,
                detail,
                attempts,
                by,
            } => (
                not_done(Outcome::Deferred, reason, detail, attempts, None),
                JobState::Deferred,
                (!second_pass).then_some(by),
            ),
        };
        if let (Some(ledger), Some(job)) = (&self.ledger, job) {
            let finished = ledger
                .finish(job, &self.config.worker_id, state, &job_result(&record))
                .await;
            lock(&self.held).remove(&job);
            finished?;
        }
        match by {
            Some(by) => Ok(Processed::Later(Later {
                reason: record.reason.unwrap_or(ReasonCode::Deferred),
                detail: record.detail.unwrap_or_default(),
                work,
                by,
            })),
            None => Ok(Processed::Done(record)),
        }
    }

    /// The record of a download: its file, and the candidate's resolver and URL (redacted).
    fn downloaded(&self, work: &Work, file: &Downloaded, candidate: Candidate) -> WorkRecord {
        let path = file
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        WorkRecord {
            resolver: Some(candidate.resolver),
            url: Some(self.redactor.redact_str(&candidate.url).to_string()),
            path: Some(path),
            sha256: Some(file.sha256.clone()),
            bytes: Some(file.bytes),
            ..WorkRecord::new(work.id.as_str(), Outcome::Downloaded)
        }
    }
}

/// The record of a work that failed in an earlier run for a reason that will not change
/// (`None` when it may: that work is claimed and tried again).
fn definite_failure(work: &Work, job: &Job) -> Option<WorkRecord> {
    use serde::de::IntoDeserializer;
    let text = job.result.reason.as_deref()?;
    let deserializer: serde::de::value::StrDeserializer<'_, serde::de::value::Error> = text.into_deserializer();
    let reason = <ReasonCode as serde::Deserialize>::deserialize(deserializer).ok()?;
    // an HTTP status is not in the ledger's row: 404 and 503 look alike there, so try again
    (!reason.may_succeed_later(None)).then(|| WorkRecord {
        reason: Some(reason),
        detail: Some(format!(
            "{reason} in an earlier run, within --resolver-cache-ttl: not tried again"
        )),
        ..WorkRecord::new(work.id.as_str(), Outcome::Failed)
    })
}

/// The record of a work that another worker FAILED since this run started: skipped here
/// (the worker that tried it counts the failure, as the one that downloads a work counts
/// the download), with the ledger's reason in the detail; a later run tries it again.
fn failed_elsewhere(work: &Work, job: &Job) -> WorkRecord {
    let reason = job.result.reason.as_deref().unwrap_or("no reason recorded");
    WorkRecord {
        reason: Some(ReasonCode::FailedElsewhere),
        detail: Some(format!(
            "already failed since this run started, in another worker or earlier in this run ({reason}): \
             not tried again until a later run"
        )),
        ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
    }
}

/// The record of a work the ledger has settled: skipped, as already downloaded.
fn already_done(work: &Work, job: Job) -> WorkRecord {
    WorkRecord {
        reason: Some(ReasonCode::AlreadyDownloaded),
        path: job.result.path,
        sha256: job.result.sha256,
        bytes: job.result.bytes.and_then(|b| u64::try_from(b).ok()),
        ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
    }
}

/// What the ledger keeps of a work's outcome.
fn job_result(record: &WorkRecord) -> JobResult {
    JobResult {
        outcome: record.outcome.map(|o| o.as_str().to_owned()),
        path: record.path.clone(),
        sha256: record.sha256.clone(),
        bytes: record.bytes.and_then(|b| i64::try_from(b).ok()),
        reason: record.reason.map(|r| r.as_str().to_owned()),
    }
}

/// A file's SHA-256 and size when it is there and passes the payload checks, read in
/// 64 KiB pieces.
fn check_file(path: &std::path::Path) -> std::io::Result<Option<(String, u64)>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut hasher = Sha256::new();
    let mut check = crate::download::PayloadCheck::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        check.update(&buf[..n]);
        hasher.update(&buf[..n]);
    }
    if check.finish().is_err() {
        return Ok(None);
    }
    Ok(Some((crate::ledger::hex(&hasher.finalize()), check.total())))
}

/// The SHA-256 of a file, lower-case hex, read in 64 KiB pieces.
fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(crate::ledger::hex(&hasher.finalize()))
}

/// Completes once the run is cancelled.
pub(super) async fn cancelled(mut rx: tokio::sync::watch::Receiver<bool>) {
    // an error means the sender is gone: the run is over, which is as good as cancelled
    let _ = rx.wait_for(|c| *c).await;
}

/// A task that runs `tick` every `every` (never, with `None`) until the returned sender
/// sends; a tick in progress is not raced against the stop, so a lease renewal or a sync is
/// never dropped halfway.
fn spawn_every<F, Fut>(every: Option<Duration>, mut tick: F) -> (watch::Sender<bool>, JoinHandle<()>)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, mut stop) = watch::channel(false);
    let task = tokio::spawn(async move {
        let Some(every) = every else { return };
        let mut interval = tokio::time::interval_at(Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = interval.tick() => tick().await,
            }
        }
    });
    (stop_tx, task)
}
