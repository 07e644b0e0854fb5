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

use super::run::{lock, PipelineError};
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
}

enum Message {
    Finished(Finished),
    /// Answered once everything queued before it is recorded.
    Flush(oneshot::Sender<()>),
}

/// See the module docs.
pub(super) struct Finisher {
    tx: mpsc::UnboundedSender<Message>,
    /// Until the task is started (by the first run, on its runtime).
    rx: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
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
        let (tx, rx) = mpsc::unbounded_channel();
        Finisher {
            tx,
            rx: Mutex::new(Some(rx)),
            task: Mutex::new(None),
            ledger,
            owner,
            durability,
            held,
            error: Arc::default(),
            failed_tx: Arc::new(watch::channel(false).0),
        }
    }

    /// Starts the task on the current runtime (once; later calls do nothing).
    pub(super) fn start(&self) {
        let Some(rx) = lock(&self.rx).take() else {
            return;
        };
        let task = tokio::spawn(run(
            rx,
            self.ledger.clone(),
            self.owner.clone(),
            self.durability,
            self.held.clone(),
            self.error.clone(),
            self.failed_tx.clone(),
        ));
        *lock(&self.task) = Some(AbortOnDrop(task));
    }

    /// Queues a downloaded work. Once the finisher has failed, it is not finalized (its
    /// lease is given back with the run's).
    pub(super) fn submit(&self, finished: Finished) {
        let _ = self.tx.send(Message::Finished(finished));
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
    /// failure, if there was one since the last flush.
    pub(super) async fn flush(&self) -> Result<(), PipelineError> {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Message::Flush(ack)).is_ok() && lock(&self.task).is_some() {
            let _ = done.await;
        }
        let error = lock(&self.error).take();
        // a later run records again
        self.failed_tx.send_replace(false);
        error.map_or(Ok(()), Err)
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
            if let Err(e) = finish_group(&mut group, ledger.as_ref(), &owner, durability, &held).await {
                tracing::error!("stopping the run: {e}");
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
    if durability == Durability::Batch {
        let paths: Vec<PathBuf> = group.iter_mut().map(|f| std::mem::take(&mut f.path)).collect();
        tokio::task::spawn_blocking(move || sync_batch(&paths))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
            .map_err(|e| PipelineError::Durability(format!("cannot force the downloaded files to disk: {e}")))?;
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
