//! Validated streaming downloads: the payload streams to `<out>/.partial/<stem>.part`
//! while it is hashed (SHA-256) and checked ([`PayloadCheck`]), is fsynced, and only then
//! renamed to `<out>/<stem>.pdf` ([`download_pdf`], or [`stage_pdf`] and [`Staged::commit`]). A payload that fails a check is removed, with a
//! [`ReasonCode`] saying why. Nothing of the payload is held in memory beyond one frame.
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

mod naming;
mod validate;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;
use tower_service::Service;

pub use self::naming::{file_stem, safe_join};
pub use self::validate::{PayloadCheck, HEAD_WINDOW, MIN_PDF_BYTES, TAIL_WINDOW};
use crate::error::BoxError;
use crate::reason::ReasonCode;

/// Name of the folder inside the output folder where payloads stream before they are
/// checked.
pub const PARTIAL_DIR: &str = ".partial";

/// Limits of one download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DownloadOptions {
    /// The largest payload accepted, in bytes (default [`DEFAULT_MAX_BYTES`], 4 GiB); a
    /// larger one fails with `too_large` (the runner's `--max-bytes`).
    pub max_bytes: u64,
}

/// The default [`DownloadOptions::max_bytes`]: 4 GiB.
pub const DEFAULT_MAX_BYTES: u64 = 4 << 30;

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            max_bytes: DEFAULT_MAX_BYTES,
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
            source: None,
        }
    }

    /// A failure from an error of the stack or the body.
    pub fn from_error(err: BoxError, status: Option<StatusCode>) -> Self {
        let (reason, retryable) = crate::reason::classify_error(&*err);
        DownloadFailure {
            reason,
            status,
            detail: err.to_string(),
            retryable,
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
    pub async fn commit(mut self, final_path: &Path) -> Result<Downloaded, DownloadFailure> {
        let from = self.guard.path.clone();
        if let Err(e) = tokio::fs::rename(&from, final_path).await {
            return Err(DownloadFailure::new(
                ReasonCode::IoError,
                Some(self.status),
                format!("cannot move the download into {}: {e}", final_path.display()),
            ));
        }
        self.guard.armed = false;
        sync_folder(final_path).await;
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

/// Creates `path` in `dir`, making `dir` (and its parents) only when it is missing, so a
/// run pays for the folder once, not once per download.
fn create_part(dir: &Path, path: &Path) -> Result<std::fs::File, (&'static str, PathBuf, std::io::Error)> {
    match std::fs::File::create(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| ("cannot create", dir.to_owned(), e))?;
            std::fs::File::create(path).map_err(|e| ("cannot create", path.to_owned(), e))
        }
        Err(e) => Err(("cannot create", path.to_owned(), e)),
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

    let io_failure = |what: &str, path: &Path, e: std::io::Error| {
        DownloadFailure::new(
            ReasonCode::IoError,
            Some(status),
            format!("{what} {}: {e}", path.display()),
        )
    };
    // Created on the blocking pool: a create (with the folder on first use) can take a
    // millisecond, too long for the async thread that every download in flight shares.
    // The guard exists first; if this future is cancelled meanwhile, the guard's drop and
    // the create take the same lock, so the file is either never made or removed.
    let gate = Arc::new(Mutex::new(false));
    let guard = PartialGuard {
        path: partial_path.clone(),
        armed: true,
        creating: gate.clone(),
    };
    let created = tokio::task::spawn_blocking(move || {
        let abandoned = gate.lock().unwrap_or_else(|e| e.into_inner());
        if *abandoned {
            return Ok(None);
        }
        create_part(&partial_dir, &partial_path).map(Some)
    })
    .await;
    let file = match created {
        Ok(Ok(Some(file))) => file,
        Ok(Ok(None)) => {
            return Err(DownloadFailure::new(
                ReasonCode::IoError,
                Some(status),
                "the download was abandoned",
            ))
        }
        Ok(Err((what, path, e))) => return Err(io_failure(what, &path, e)),
        Err(e) => {
            return Err(DownloadFailure::new(
                ReasonCode::IoError,
                Some(status),
                format!("cannot create {}: {e}", guard.path.display()),
            ))
        }
    };
    let file = tokio::fs::File::from_std(file);
    let body = std::pin::pin!(response.into_body());
    let (sha256, bytes) = stream_to(body, file, &guard.path, status, options).await?;
    Ok(Staged {
        guard,
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

async fn stream_to<B>(
    mut body: std::pin::Pin<&mut B>,
    file: tokio::fs::File,
    path: &Path,
    status: StatusCode,
    options: &DownloadOptions,
) -> Result<(String, u64), DownloadFailure>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
    let mut hasher = Sha256::new();
    let mut check = PayloadCheck::new();
    let write_failure = |e: std::io::Error| {
        DownloadFailure::new(
            ReasonCode::IoError,
            Some(status),
            format!("writing {}: {e}", path.display()),
        )
    };
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
        hasher.update(&data);
        file.write_all(&data).await.map_err(write_failure)?;
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
    file.flush().await.map_err(write_failure)?;
    file.get_mut().sync_all().await.map_err(write_failure)?;
    let sha256 = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok((sha256, check.total()))
}
