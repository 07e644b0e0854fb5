//! Validated streaming downloads: the payload streams to `<out>/.partial/<stem>.part`
//! while it is hashed (SHA-256) and checked ([`PayloadCheck`]), is synced as
//! [`Durability`] says, and only then renamed to `<out>/<stem>.pdf` ([`download_pdf`], or
//! [`stage_pdf`] and [`Staged::commit`]). A payload that fails a check is removed, with a
//! [`ReasonCode`] saying why. At most two pieces of 1 MiB of a payload are in memory at once;
//! a PDF of up to 1 MiB costs one trip to the blocking pool (create, write, hash, sync,
//! close), and its rename is one syscall made in place.
//!
//! # Example
//!
//! ```no_run
//! use contentdownload::download::{download_pdf, DownloadOptions};
//! use contentdownload::service::{HttpClient, HttpConfig};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = HttpClient::new(&HttpConfig::default())?;
//! let req = http::Request::get("https://arxiv.org/pdf/1706.03762").body(Default::default())?;
//! let done = download_pdf(client, req, "pdfs".as_ref(), "W2963403868", &DownloadOptions::default()).await?;
//! println!("{} bytes, sha256 {}", done.bytes, done.sha256);
//! # Ok(()) }
//! ```

mod durability;
mod naming;
mod validate;
mod write;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use tower::ServiceExt;
use tower_service::Service;

pub use self::durability::{sync_batch, Durability};
pub use self::naming::{file_stem, safe_join};
pub use self::validate::{PayloadCheck, HEAD_WINDOW, MIN_PDF_BYTES, TAIL_WINDOW};
use self::write::{DiskError, Gathered, Sink};
use crate::context::RetryAfterHint;
use crate::error::BoxError;
use crate::reason::ReasonCode;

/// Name of the folder inside the output folder where payloads stream before they are
/// checked.
pub const PARTIAL_DIR: &str = ".partial";

/// Where finished PDFs go: the output folder they were checked in (the default), or an
/// object store they are put to from there (feature `s3`), the local file then removed.
#[derive(Clone, Debug, Default)]
pub enum Output {
    /// `<out>/<stem>.pdf`, where the download renamed it.
    #[default]
    Folder,
    /// `<prefix>/<stem>.pdf` in this store; the local folder only stages.
    #[cfg(feature = "s3")]
    #[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
    Store(crate::store::Store),
}

/// Limits of one download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadOptions {
    /// The largest payload accepted, in bytes (default [`DEFAULT_MAX_BYTES`], 4 GiB); a
    /// larger one fails with `too_large` (the runner's `--max-bytes`).
    pub max_bytes: u64,
    /// When the file is forced to disk (default [`Durability::File`]: before the download
    /// returns). With [`Durability::Batch`] the caller syncs groups of downloads with
    /// [`sync_batch`].
    pub durability: Durability,
}

/// The default [`DownloadOptions::max_bytes`]: 4 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_bytes: DEFAULT_MAX_BYTES,
            durability: Durability::File,
        }
    }
}

/// A payload that passed every check and is in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Downloaded {
    /// Where it is: `<out>/<stem>.pdf`.
    pub path: PathBuf,
    /// SHA-256 of the file, lower-case hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// The response status.
    pub status: StatusCode,
}

/// A download that did not produce a valid PDF. Nothing is left on disk.
#[derive(Debug, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct DownloadFailure {
    /// Why, as a code.
    pub reason: ReasonCode,
    /// The response status, when a response came.
    pub status: Option<StatusCode>,
    /// Why, in words.
    pub detail: String,
    /// Whether trying the same URL again may help (a cut connection, a timeout).
    pub retryable: bool,
    /// How long the provider asked us to wait before asking again, when it said: the
    /// Retry-After of a refused response (the
    /// [`RetryAfterHint`] the Retry-After layer set on it),
    /// or the wait carried by the error behind the failure (a `Deferred`'s Retry-After, a
    /// cool-down's or a rate limit's remaining wait). Found once, where the failure is made,
    /// so a caller planning a second attempt need not look into the error chain.
    pub retry_after: Option<Duration>,
    /// The error behind it, when there was one (for downcasting `Deferred` and the like).
    #[source]
    pub source: Option<BoxError>,
}

impl DownloadFailure {
    fn new(reason: ReasonCode, status: Option<StatusCode>, detail: impl Into<String>) -> Self {
        DownloadFailure {
            reason,
            status,
            detail: detail.into(),
            retryable: false,
            retry_after: None,
            source: None,
        }
    }

    /// A failure from an error of the stack or the body, with the wait the error carries
    /// (see [`retry_after`](DownloadFailure::retry_after)).
    pub fn from_error(err: BoxError, status: Option<StatusCode>) -> Self {
        let (reason, retryable) = crate::reason::classify_error(&*err);
        let now = tokio::time::Instant::now();
        let retry_after = crate::reason::retry_hint(&*err, now)
            .1
            .map(|at| at.saturating_duration_since(now));
        DownloadFailure {
            reason,
            status,
            detail: err.to_string(),
            retryable,
            retry_after,
            source: Some(err),
        }
    }
}

/// Sends `request` through `service` and streams a valid PDF to `<out_dir>/<stem>.pdf`:
/// [`stage_pdf`] then [`Staged::commit`].
///
/// `stem` must be a plain file name (see [`file_stem`]); anything else fails with
/// [`ReasonCode::Other`] before any request is sent.
pub async fn download_pdf<S, B>(
    service: S,
    request: Request<Full<Bytes>>,
    out_dir: &Path,
    stem: &str,
    options: &DownloadOptions,
) -> Result<Downloaded, DownloadFailure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let final_path = safe_join(out_dir, stem, "pdf").ok_or_else(|| not_plain(stem))?;
    let staged = stage_pdf(service, request, out_dir, stem, options).await?;
    staged.commit(&final_path).await
}

fn not_plain(name: &str) -> DownloadFailure {
    DownloadFailure::new(ReasonCode::Other, None, format!("{name:?} is not a plain file name"))
}

/// A payload that passed every check, still in `<out>/.partial/`. Commit it to put it in
/// place; drop it to delete it (also when the future that staged it is cancelled).
#[derive(Debug)]
pub struct Staged {
    guard: PartialGuard,
    durability: Durability,
    /// SHA-256 of the payload, lower-case hex.
    pub sha256: String,
    /// Its size.
    pub bytes: u64,
    /// The response status.
    pub status: StatusCode,
}

impl Staged {
    /// Where the payload is now.
    pub fn partial_path(&self) -> &Path {
        &self.guard.path
    }

    /// Renames the payload to `final_path` (in the same file system) and returns where it is.
    /// With [`Durability::File`], the folder is synced after the rename (syncs of one folder
    /// are shared by the renames that finished before them).
    pub async fn commit(mut self, final_path: &Path) -> Result<Downloaded, DownloadFailure> {
        // Renamed here, not on the blocking pool: one metadata syscall within a folder of
        // one file system (tens of µs on ext4) costs less than the blocking-pool round trip
        // it used to take (two thread wake-ups and the futexes around them, per file).
        if let Err(e) = std::fs::rename(&self.guard.path, final_path) {
            return Err(DownloadFailure::new(
                ReasonCode::IoError,
                Some(self.status),
                format!("cannot move the download into {}: {e}", final_path.display()),
            ));
        }
        self.guard.armed = false;
        if self.durability == Durability::File {
            sync_folder(final_path).await;
        }
        Ok(Downloaded {
            path: final_path.to_owned(),
            sha256: std::mem::take(&mut self.sha256),
            bytes: self.bytes,
            status: self.status,
        })
    }
}

/// Makes a rename into `path`'s folder durable: the file's data was synced before the
/// rename, but the new directory entry lives in the folder, and a power loss before the
/// folder reaches the disk would lose a file the ledger already records as FINALIZED (the
/// next run would skip it). Best effort: a file system that cannot sync a folder gets a
/// warning, not a failed download. Unix only; elsewhere a folder cannot be opened to sync.
///
/// Syncs are shared: one sync of a folder covers every rename into it that finished before
/// the sync started, so concurrent downloads wait for one sync instead of queueing one each
/// (the same group commit as a database's log).
async fn sync_folder(path: &Path) {
    #[cfg(unix)]
    {
        use std::collections::HashMap;
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::sync::OnceLock;

        #[derive(Default)]
        struct FolderSync {
            /// Renames into the folder so far (a ticket each, taken after the rename).
            renamed: AtomicU64,
            /// Held while syncing; the ticket up to which the folder is known synced.
            synced: tokio::sync::Mutex<u64>,
        }
        static FOLDERS: OnceLock<Mutex<HashMap<PathBuf, Arc<FolderSync>>>> = OnceLock::new();

        let Some(folder) = path.parent().map(Path::to_owned) else {
            return;
        };
        let state = {
            let mut folders = FOLDERS
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(folders.entry(folder.clone()).or_default())
        };
        let ticket = state.renamed.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = state.synced.lock().await;
        if *synced >= ticket {
            return; // a sync that started after this rename has finished
        }
        let covers = state.renamed.load(Ordering::SeqCst);
        let result = tokio::task::spawn_blocking(move || std::fs::File::open(&folder)?.sync_all())
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        match result {
            Ok(()) => *synced = covers,
            Err(e) => tracing::warn!(path = %path.display(), "could not sync the output folder after a rename: {e}"),
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// Deletes the partial file when dropped while armed: a failed, rejected or cancelled
/// download leaves nothing behind.
#[derive(Debug)]
struct PartialGuard {
    path: PathBuf,
    armed: bool,
    /// Held while the file is being created; set (to "abandoned") by the drop, so that a
    /// create still queued on the blocking pool does not make the file after it.
    creating: Arc<Mutex<bool>>,
}

impl Drop for PartialGuard {
    fn drop(&mut self) {
        if self.armed {
            let mut abandoned = self.creating.lock().unwrap_or_else(|e| e.into_inner());
            *abandoned = true;
            // A small synchronous unlink: Drop cannot await, and the file may be half written.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Sends `request` through `service` and streams the payload to
/// `<out_dir>/.partial/<key>.part` while hashing and checking it. Several candidates of one
/// work can be staged at once under different keys; commit the first that succeeds.
pub async fn stage_pdf<S, B>(
    service: S,
    request: Request<Full<Bytes>>,
    out_dir: &Path,
    key: &str,
    options: &DownloadOptions,
) -> Result<Staged, DownloadFailure>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let partial_dir = out_dir.join(PARTIAL_DIR);
    let partial_path = safe_join(&partial_dir, key, "part").ok_or_else(|| not_plain(key))?;
    let response = service
        .oneshot(request)
        .await
        .map_err(|e| DownloadFailure::from_error(e, None))?;
    let status = response.status();
    if !status.is_success() {
        let reason = if status == StatusCode::TOO_MANY_REQUESTS {
            ReasonCode::Throttled
        } else {
            ReasonCode::HttpStatus
        };
        let mut failure = DownloadFailure::new(reason, Some(status), format!("the server answered {status}"));
        failure.retryable = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        // the response is dropped here: its hint goes on with the failure
        failure.retry_after = response.extensions().get::<RetryAfterHint>().map(|h| h.delay);
        return Err(failure);
    }
    if let Some(len) = declared_length(&response) {
        if len > options.max_bytes {
            return Err(DownloadFailure::new(
                ReasonCode::TooLarge,
                Some(status),
                format!(
                    "Content-Length {len} is over the maximum of {} bytes",
                    options.max_bytes
                ),
            ));
        }
    }

    // The guard exists before anything is on disk: if this future is cancelled, its drop
    // and the piece that creates the file take the same lock, so the file is either never
    // made or removed.
    let abandoned = Arc::new(Mutex::new(false));
    let guard = PartialGuard {
        path: partial_path.clone(),
        armed: true,
        creating: abandoned.clone(),
    };
    let sink = Sink::new(partial_dir, partial_path, abandoned, options.durability);
    // The response's parts live until the body is read: they carry the host's slot under
    // `--max-per-host` (`HostPermit`), so a download counts until its last byte.
    let (parts, body) = response.into_parts();
    let body = std::pin::pin!(body);
    let streamed = stream_to(body, sink, status, options).await;
    drop(parts);
    let (sha256, bytes) = streamed?;
    Ok(Staged {
        guard,
        durability: options.durability,
        sha256,
        bytes,
        status,
    })
}

fn declared_length<B>(response: &Response<B>) -> Option<u64> {
    response
        .headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A piece's write on the blocking pool.
type PieceTask = tokio::task::JoinHandle<Result<Sink, DiskError>>;

fn spawn_piece(sink: Sink, frames: Vec<Bytes>, last: bool) -> PieceTask {
    tokio::task::spawn_blocking(move || sink.write(frames, last))
}

/// Waits for a piece's write and gives the sink back.
async fn piece_done(task: PieceTask, status: StatusCode) -> Result<Sink, DownloadFailure> {
    match task.await {
        Ok(Ok(sink)) => Ok(sink),
        Ok(Err((what, path, e))) => Err(DownloadFailure::new(
            ReasonCode::IoError,
            Some(status),
            format!("{what} {}: {e}", path.display()),
        )),
        Err(e) => Err(DownloadFailure::new(
            ReasonCode::IoError,
            Some(status),
            format!("the write was lost: {e}"),
        )),
    }
}

/// Receives the body, checking each frame here and handing pieces of up to 1 MiB to the
/// blocking pool to be hashed and written (see `write.rs` for why): one piece is written
/// while the next is received, never more.
async fn stream_to<B>(
    mut body: std::pin::Pin<&mut B>,
    sink: Sink,
    status: StatusCode,
    options: &DownloadOptions,
) -> Result<(String, u64), DownloadFailure>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut check = PayloadCheck::new();
    let mut gathered = Gathered::default();
    // the sink is either here or in the piece being written
    let mut idle = Some(sink);
    let mut writing: Option<PieceTask> = None;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|e| DownloadFailure::from_error(e.into(), Some(status)))?;
        let Ok(data) = frame.into_data() else { continue };
        check.update(&data);
        if check.total() > options.max_bytes {
            return Err(DownloadFailure::new(
                ReasonCode::TooLarge,
                Some(status),
                format!("the body passed the maximum of {} bytes", options.max_bytes),
            ));
        }
        if let Some(reason) = check.early_verdict() {
            return Err(DownloadFailure::new(reason, Some(status), "the payload is not a PDF"));
        }
        gathered.push(data);
        if gathered.is_full() {
            let sink = match (idle.take(), writing.take()) {
                (Some(sink), _) => sink,
                (None, Some(task)) => piece_done(task, status).await?,
                (None, None) => return Err(lost_sink(status)),
            };
            writing = Some(spawn_piece(sink, gathered.take(), false));
        }
    }
    if let Err(reason) = check.finish() {
        let detail = if reason == ReasonCode::TooSmall {
            format!(
                "the payload is {} bytes, under the minimum of {MIN_PDF_BYTES} bytes for a PDF",
                check.total()
            )
        } else {
            "the payload is not a valid PDF".to_owned()
        };
        return Err(DownloadFailure::new(reason, Some(status), detail));
    }
    let sink = match (idle.take(), writing.take()) {
        (Some(sink), _) => sink,
        (None, Some(task)) => piece_done(task, status).await?,
        (None, None) => return Err(lost_sink(status)),
    };
    let sink = piece_done(spawn_piece(sink, gathered.take(), true), status).await?;
    Ok((sink.sha256(), check.total()))
}

fn lost_sink(status: StatusCode) -> DownloadFailure {
    DownloadFailure::new(ReasonCode::IoError, Some(status), "the file being written was lost")
}
