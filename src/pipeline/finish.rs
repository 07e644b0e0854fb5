//! [`Finisher`]: records downloaded works as FINALIZED off the works' path, in groups, after
//! the group's files are on disk.
//!
//! A downloaded work hands its ledger row to the finisher and its worker slot goes to the
//! next work at once: the work waits for no sync and no ledger round trip (its claim is the
//! only one it waits for). The finisher's task takes whatever has piled up (up to
//! [`MAX_GROUP`]), makes those files durable as `--durability` says (one [`sync_batch`]
//! for `batch`; nothing more for `file`, whose files were synced before their rename, or
//! `none`), and only then finishes their jobs, all at once (the ledger commits finishes
//! that arrive together as one statement). So a FINALIZED row never precedes its file on
//! disk, and a sync never holds up a download.
//!
//! The leases of works waiting here stay in the run's held set (the heartbeat renews them)
//! until their row is written. The first failure (a sync or a ledger error) is kept: the
//! run learns of it through [`failed`](Finisher::failed) and stops; nothing after it is
//! finalized, and the run gives those leases back.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::error::{DurabilityError, PipelineError};
use super::lock;
use crate::download::{sync_batch, Durability};
use crate::ledger::{JobId, JobResult, JobState, Ledger};

/// The most works made durable and finalized in one group.
pub(super) const MAX_GROUP: usize = 1024;

/// With `batch`, the shortest time from one group sync to the next (a flush does not wait
/// for it). Each `syncfs` is a journal commit, during which new files wait for the journal;
/// with syncs back to back, 10,000 downloads of 100 KB took 4.9 s where `none` took 3.5 s
/// (one bulk_bench run, 2 shared cores; the gap is mostly the 1 GB that `batch` writes to
/// disk during the run and the others leave in the page cache). Spacing the syncs bounds
/// the commits to four a second; on our noisy machine the gain was not measurable. A
/// FINALIZED row lags its file by at most about this plus one sync.
pub(super) const BATCH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// A downloaded work waiting to be recorded.
pub(super) struct Finished {
    /// Its job, when there is a ledger.
    pub(super) job: Option<JobId>,
    pub(super) result: JobResult,
    /// The file, in place.
    pub(super) path: PathBuf,
    /// Found in place rather than written by this run (a run stopped before recording
    /// it): its data was never synced here, so `file` syncs it too before its row.
    pub(super) adopted: bool,
    /// Put to an object store, which acknowledged it: nothing on local disk to sync.
    pub(super) stored: bool,
}

enum Message {
    Finished(Finished),
    /// Answered once everything queued before it is recorded.
    Flush(oneshot::Sender<()>),
}

/// See the module docs.
pub(super) struct Finisher {
    /// To the task of the current run's runtime (replaced by [`start`](Finisher::start)
    /// when that task has ended, e.g. with the runtime of an earlier run).
    tx: Mutex<mpsc::UnboundedSender<Message>>,
    task: Mutex<Option<AbortOnDrop>>,
    ledger: Option<Ledger>,
    owner: String,
    durability: Durability,
    held: Arc<Mutex<HashSet<JobId>>>,
    /// The first failure; `true` is sent once it is stored.
    error: Arc<Mutex<Option<PipelineError>>>,
    failed_tx: Arc<watch::Sender<bool>>,
}

/// The finisher's task ends with the pipeline.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for Finisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finisher")
            .field("durability", &self.durability)
            .finish_non_exhaustive()
    }
}

impl Finisher {
    /// A finisher that records as `owner` in `ledger` and removes finalized jobs from
    /// `held`; its task starts with [`start`](Finisher::start).
    pub(super) fn new(
        ledger: Option<Ledger>,
        owner: String,
        durability: Durability,
        held: Arc<Mutex<HashSet<JobId>>>,
    ) -> Finisher {
        Finisher {
            // closed until `start`
            tx: Mutex::new(mpsc::unbounded_channel().0),
            task: Mutex::new(None),
            ledger,
            owner,
            durability,
            held,
            error: Arc::default(),
            failed_tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the task on the current runtime, unless one is still running (a pipeline
    /// run again on another runtime, after the first one's runtime is gone, gets a new
    /// task), and clears the failure of an earlier run.
    pub(super) fn start(&self) {
        lock(&self.error).take();
        self.failed_tx.send_replace(false);
        let mut task = lock(&self.task);
        if task.as_ref().is_some_and(|t| !t.0.is_finished()) {
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        *lock(&self.tx) = tx;
        let handle = tokio::spawn(run(
            rx,
            self.ledger.clone(),
            self.owner.clone(),
            self.durability,
            self.held.clone(),
            self.error.clone(),
            self.failed_tx.clone(),
        ));
        *task = Some(AbortOnDrop(handle));
    }

    /// Queues a downloaded work. Once the finisher has failed, it is not finalized (its
    /// lease is given back with the run's).
    pub(super) fn submit(&self, finished: Finished) {
        if lock(&self.tx).send(Message::Finished(finished)).is_err() {
            // the task is gone (its runtime ended): say so rather than drop the work quietly
            self.fail(DurabilityError::FinisherGone.into());
        }
    }

    fn fail(&self, e: PipelineError) {
        let mut error = lock(&self.error);
        if error.is_none() {
            *error = Some(e);
        }
        self.failed_tx.send_replace(true);
    }

    /// Completes when the finisher has failed (never, while it works); [`flush`] then
    /// returns the error.
    ///
    /// [`flush`]: Finisher::flush
    pub(super) async fn failed(&self) {
        let mut failed = self.failed_tx.subscribe();
        if failed.wait_for(|f| *f).await.is_err() {
            // cannot happen while `self` holds the sender; never complete rather than spin
            std::future::pending::<()>().await;
        }
    }

    /// Waits until every work queued so far is durable and recorded, and returns the first
    /// failure of this run, if it was not returned already. After a failure nothing more
    /// is recorded until the next run's [`start`](Finisher::start).
    pub(super) async fn flush(&self) -> Result<(), PipelineError> {
        let (ack, done) = oneshot::channel();
        let sent = lock(&self.tx).send(Message::Flush(ack)).is_ok();
        if !sent || done.await.is_err() {
            self.fail(DurabilityError::FinisherGone.into());
        }
        lock(&self.error).take().map_or(Ok(()), Err)
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Message>,
    ledger: Option<Ledger>,
    owner: String,
    durability: Durability,
    held: Arc<Mutex<HashSet<JobId>>>,
    error: Arc<Mutex<Option<PipelineError>>>,
    failed: Arc<watch::Sender<bool>>,
) {
    let mut messages = Vec::with_capacity(MAX_GROUP);
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut acks = Vec::new();
    let mut last_sync: Option<tokio::time::Instant> = None;
    while rx.recv_many(&mut messages, MAX_GROUP).await > 0 {
        let flushing = messages.iter().any(|m| matches!(m, Message::Flush(_)));
        if let (Durability::Batch, Some(last), false) = (durability, last_sync, flushing) {
            // let the group grow until the next sync is due (or a flush asks for it now)
            let due = last + BATCH_EVERY;
            while messages.len() < MAX_GROUP {
                tokio::select! {
                    () = tokio::time::sleep_until(due) => break,
                    m = rx.recv() => match m {
                        Some(m @ Message::Flush(_)) => {
                            messages.push(m);
                            break;
                        }
                        Some(m) => messages.push(m),
                        None => break,
                    },
                }
            }
        }
        for m in messages.drain(..) {
            match m {
                Message::Finished(f) => group.push(f),
                Message::Flush(ack) => acks.push(ack),
            }
        }
        // after a failure nothing more is recorded; the run gives those leases back
        if !group.is_empty() && !*failed.borrow() {
            last_sync = Some(tokio::time::Instant::now());
            // not logged here: the run logs it, as what stopped it or as what else failed
            // while it stopped (once, not twice)
            if let Err(e) = finish_group(&mut group, ledger.as_ref(), &owner, durability, &held).await {
                *lock(&error) = Some(e);
                failed.send_replace(true);
            }
        }
        group.clear();
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
    }
}

async fn finish_group(
    group: &mut [Finished],
    ledger: Option<&Ledger>,
    owner: &str,
    durability: Durability,
    held: &Mutex<HashSet<JobId>>,
) -> Result<(), PipelineError> {
    // `batch` syncs the group; `file` synced what it wrote before the rename, but not a
    // file it found in place
    let paths: Vec<PathBuf> = match durability {
        Durability::Batch => group
            .iter_mut()
            .filter(|f| !f.stored)
            .map(|f| std::mem::take(&mut f.path))
            .collect(),
        Durability::File => group
            .iter_mut()
            .filter(|f| f.adopted && !f.stored)
            .map(|f| std::mem::take(&mut f.path))
            .collect(),
        _ => Vec::new(),
    };
    if !paths.is_empty() {
        tokio::task::spawn_blocking(move || sync_batch(&paths))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(DurabilityError::Sync)?;
    }
    let Some(ledger) = ledger else {
        return Ok(());
    };
    // sent together, so the ledger commits them together (SQLite: one statement per 128)
    let jobs: Vec<JobId> = group.iter().filter_map(|f| f.job).collect();
    let finishes = group.iter().filter_map(|f| {
        let job = f.job?;
        Some(ledger.finish(job, owner, JobState::Finalized, &f.result))
    });
    let results = join_all(finishes).await;
    {
        let mut held = lock(held);
        for job in &jobs {
            held.remove(job);
        }
    }
    results.into_iter().collect::<Result<Vec<()>, _>>()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(dir: &std::path::Path) -> Finished {
        let path = dir.join("a.pdf");
        std::fs::write(&path, b"%PDF-1.7\n").unwrap();
        Finished {
            job: None,
            result: JobResult::default(),
            path,
            adopted: false,
            stored: false,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A pipeline run again on another runtime, after the first runtime is gone, gets a
    /// finisher task of its own; a finisher whose task is gone says so instead of dropping
    /// the works it is handed.
    #[test]
    fn a_finisher_outlives_the_runtime_of_its_first_run() {
        let dir = tempfile::tempdir().unwrap();
        let finisher = Finisher::new(None, "w".into(), Durability::Batch, Arc::default());
        let first = runtime();
        first.block_on(async {
            finisher.start();
            finisher.submit(finished(dir.path()));
            finisher.flush().await.unwrap();
        });
        drop(first);

        // no start on the new runtime: the old task is gone, and the flush says so
        runtime().block_on(async {
            finisher.submit(finished(dir.path()));
            let err = finisher.flush().await.unwrap_err();
            assert!(err.to_string().contains("finisher is not running"), "{err}");
        });

        // a run on another runtime starts a task of its own, and the old failure is cleared
        runtime().block_on(async {
            finisher.start();
            finisher.submit(finished(dir.path()));
            finisher.flush().await.unwrap();
        });
    }
}
