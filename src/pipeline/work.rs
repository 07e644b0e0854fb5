//! One work's way through the pipeline: its ledger claim, its fetch, its outcome recorded;
//! and the heartbeat that keeps the leases of the works in flight.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use tokio::time::Instant;

use super::fallback::{DeferredBy, FetchEnv, FetchResult};
use super::finish::Finished;
use super::frontier::{gated, Slot};
use super::run::{lock, Core};
use crate::context::{OperationType, WorkId};
use crate::download::{file_stem, safe_join};
use crate::layers::idempotency::derive_key;
use crate::ledger::{Claim, Job, JobId, JobResult, JobState, LedgerError, NewJob};
use crate::manifest::{Outcome, WorkRecord, MANIFEST_SYNC_EVERY};
use crate::reason::ReasonCode;
use crate::resolvers::ResolveContext;
use crate::works::Work;

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

impl Core {
    fn heartbeat_every(&self) -> Duration {
        (self.config.lease_ttl / 3).max(Duration::from_millis(100))
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
        if !tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return None;
        }
        let checked = tokio::task::spawn_blocking(move || check_file(&path)).await.ok()?;
        match checked {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!("a file in place could not be read, downloading it again: {e}");
                None
            }
        }
    }

    pub(super) async fn process(
        &self,
        work: Work,
        second_pass: bool,
        cancel: tokio::sync::watch::Receiver<bool>,
        slot: Option<&Arc<Slot>>,
    ) -> Result<Processed, LedgerError> {
        let started = Instant::now();
        let stem = file_stem(&work);
        let mut job_id = None;
        if let Some(ledger) = &self.ledger {
            let new_job = self.job_for(&work);
            let mut claim = ledger
                .claim(&new_job, &self.config.worker_id, self.config.lease_ttl)
                .await?;
            // the ledger believes the disk: a downloaded work whose file is gone or changed
            // is planned and claimed again (once: a second settled claim means another
            // worker has just downloaded it again)
            let mut replanned = false;
            let retaken;
            if let Claim::Settled(job) = &claim {
                if let Some(why) = self.recorded_file_problem(job).await {
                    replanned = true;
                    tracing::warn!(
                        work = %work.id,
                        path = job.result.path.as_deref().unwrap_or(""),
                        "the file of a downloaded work is {why}: planning it again"
                    );
                    ledger.replan(job, &format!("file {why}")).await?;
                    claim = ledger
                        .claim(&new_job, &self.config.worker_id, self.config.lease_ttl)
                        .await?;
                }
            }
            match claim {
                Claim::Settled(job) => {
                    return Ok(Processed::Done(WorkRecord {
                        reason: Some(ReasonCode::AlreadyDownloaded),
                        path: job.result.path,
                        sha256: job.result.sha256,
                        bytes: job.result.bytes.and_then(|b| u64::try_from(b).ok()),
                        ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
                    }));
                }
                Claim::Busy(job) => {
                    let owner = job.lease_owner.unwrap_or_default();
                    return Ok(Processed::Later(Later {
                        work,
                        reason: ReasonCode::LeasedElsewhere,
                        detail: format!("leased by {owner}"),
                        by: Vec::new(),
                    }));
                }
                Claim::Leased(job) => {
                    lock(&self.held).insert(job.id);
                    job_id = Some(job.id);
                    // only a work claimed before (by a run that stopped) can have left a file
                    retaken = job.attempts > 1;
                }
            }
            // A file in place without a FINALIZED row: downloaded by a run that stopped
            // before the file's group was recorded. It passed the checks before its rename;
            // checked again (a power loss may have cut it) and hashed, it is recorded, not
            // fetched again. (Not a file just found missing or changed: that one is fetched.)
            let in_place = if retaken && !replanned {
                self.file_in_place(&stem).await
            } else {
                None
            };
            if let Some((sha256, bytes)) = in_place {
                let record = WorkRecord {
                    reason: Some(ReasonCode::AlreadyDownloaded),
                    detail: Some("found in place, checked and hashed; its run had stopped before recording it".into()),
                    path: Some(format!("{stem}.pdf")),
                    sha256: Some(sha256),
                    bytes: Some(bytes),
                    ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
                };
                let result = JobResult {
                    outcome: Some("downloaded".into()),
                    ..job_result(&record)
                };
                self.finisher.submit(Finished {
                    job: job_id,
                    result,
                    path: self.config.out_dir.join(format!("{stem}.pdf")),
                    adopted: true,
                });
                return Ok(Processed::Done(record));
            }
        } else if self.config.out_dir.join(format!("{stem}.pdf")).is_file() {
            return Ok(Processed::Done(WorkRecord {
                reason: Some(ReasonCode::AlreadyDownloaded),
                path: Some(format!("{stem}.pdf")),
                ..WorkRecord::new(work.id.as_str(), Outcome::Skipped)
            }));
        }

        // In a run's first pass each request waits for its host's turn in the crawl
        // frontier, the work's worker slot given back meanwhile.
        let gated = slot.map(|slot| {
            let resolve = ResolveContext {
                http: gated(&self.resolve.http, slot),
                config: self.resolve.config.clone(),
                robots: self.resolve.robots.clone(),
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
        let fetch: futures_util::future::BoxFuture<'_, FetchResult> = Box::pin(self.fallback.fetch(&work, env));
        let result = tokio::select! {
            r = fetch => r,
            () = cancelled(cancel) => {
                // abandoned: the partial files are gone with the fetch; give the work back
                if let (Some(ledger), Some(job)) = (&self.ledger, job_id) {
                    let released = ledger.release(job, &self.config.worker_id).await;
                    lock(&self.held).remove(&job);
                    released?;
                }
                return Ok(Processed::Cancelled);
            }
        };
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let not_done = |outcome, reason, detail, attempts, http_status| WorkRecord {
            reason: Some(reason),
            detail: Some(detail),
            elapsed_ms,
            attempts,
            http_status,
            ..WorkRecord::new(work.id.as_str(), outcome)
        };
        let (record, state, later, by) = match result {
            FetchResult::Downloaded {
                file,
                candidate,
                attempts,
            } => {
                let file_path = file.path.clone();
                let path = file
                    .path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let url = self.redactor.redact_str(&candidate.url).to_string();
                let record = WorkRecord {
                    resolver: Some(candidate.resolver),
                    url: Some(url),
                    path: Some(path),
                    sha256: Some(file.sha256),
                    bytes: Some(file.bytes),
                    elapsed_ms,
                    attempts,
                    ..WorkRecord::new(work.id.as_str(), Outcome::Downloaded)
                };
                // made durable and recorded by the finisher, in a group, while this work's
                // slot goes to the next one (its lease stays held until then)
                self.finisher.submit(Finished {
                    job: job_id,
                    result: job_result(&record),
                    path: file_path,
                    adopted: false,
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
                false,
                Vec::new(),
            ),
            FetchResult::Deferred {
                reason,
                detail,
                attempts,
                by,
            } => (
                not_done(Outcome::Deferred, reason, detail, attempts, None),
                JobState::Deferred,
                !second_pass,
                by,
            ),
        };
        if let (Some(ledger), Some(job)) = (&self.ledger, job_id) {
            let result = job_result(&record);
            let finished = ledger.finish(job, &self.config.worker_id, state, &result).await;
            lock(&self.held).remove(&job);
            finished?;
        }
        if later {
            return Ok(Processed::Later(Later {
                reason: record.reason.unwrap_or(ReasonCode::Deferred),
                detail: record.detail.unwrap_or_default(),
                work,
                by,
            }));
        }
        Ok(Processed::Done(record))
    }
}

/// What the ledger keeps of a work's outcome.
fn job_result(record: &WorkRecord) -> JobResult {
    JobResult {
        outcome: record.outcome.map(|o| format!("{o:?}").to_ascii_lowercase()),
        path: record.path.clone(),
        sha256: record.sha256.clone(),
        bytes: record.bytes.and_then(|b| i64::try_from(b).ok()),
        reason: record.reason.map(|r| r.as_str().to_owned()),
    }
}

/// A file's SHA-256 and size when it passes the payload checks, read in 64 KiB pieces.
fn check_file(path: &std::path::Path) -> std::io::Result<Option<(String, u64)>> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
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
