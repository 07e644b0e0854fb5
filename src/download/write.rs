//! The disk side of a download: frames are gathered on the async side into pieces of up to
//! [`WRITE_PIECE`] bytes, and each piece is hashed and written by one short task on the
//! blocking pool, the next piece being received meanwhile.
//!
//! # Why pieces, and not a write per frame
//!
//! Each `tokio::fs` write is a trip through the blocking pool (two thread wake-ups); a
//! 100 KB PDF arrives in a dozen frames, so the previous writer paid a dozen trips, a
//! `pwrite` each and the futexes around them (435,540 futex calls for 10,000 files in
//! issue 14's strace). Gathered, a PDF of up to 1 MiB is one trip: create, one vectored
//! write, (fsync), close. A large payload streams in 1 MiB pieces, at most two in memory
//! (one being written, one being received), hashed on the blocking thread, so hashing runs
//! on another core than the one receiving.
//!
//! A task on the blocking pool lives only as long as one piece's write: one task kept for a
//! whole download would also stop tokio's paused test clock from advancing while a body
//! stalls.
//!
//! # Write-back while downloading
//!
//! A payload of several pieces that is to be synced (`file` or `batch`) has each piece's
//! write-back to disk started as soon as the piece is written, so the disk works while the
//! rest arrives and the final sync only waits for the last pieces: with the whole 1 GiB
//! left in the page cache, the final `syncfs` alone took about 1 s (issue 14). On Linux
//! this is `posix_fadvise(POSIX_FADV_DONTNEED)` on the piece's range, which starts an
//! asynchronous write-back of the range's dirty pages (as `sync_file_range(WRITE)` does)
//! and drops the pages already clean. `sync_file_range` itself is only in `libc`, behind
//! `unsafe`, which this crate forbids; rustix's `fadvise` is safe. Only advice: an error
//! is ignored, and the sync before FINALIZED is what makes the file durable. A payload of
//! one piece gets none (its sync, or its group's, writes it at once).

use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use super::Durability;

/// Bytes gathered before they are handed to the blocking pool to be hashed and written.
pub(super) const WRITE_PIECE: usize = 1 << 20;

/// Frames gathered before a write even when they are small (`writev` takes at most 1,024).
const MAX_FRAMES: usize = 512;

/// What failed on the disk side: what was being done, to which path, and the error.
pub(super) type DiskError = (&'static str, PathBuf, std::io::Error);

/// The file being written and its hash so far; moved into each piece's blocking task and
/// back.
pub(super) struct Sink {
    dir: PathBuf,
    path: PathBuf,
    /// `true` once the download was abandoned (set by the partial file's guard); held
    /// while the file is created, so it is either never made or removed after.
    abandoned: Arc<Mutex<bool>>,
    file: Option<std::fs::File>,
    hasher: Sha256,
    /// Bytes written so far.
    written: u64,
    durability: Durability,
}

/// Frames waiting for the next piece.
#[derive(Default)]
pub(super) struct Gathered {
    frames: Vec<Bytes>,
    len: usize,
}

impl Gathered {
    pub(super) fn push(&mut self, data: Bytes) {
        self.len += data.len();
        self.frames.push(data);
    }

    /// Whether enough is gathered for a write.
    pub(super) fn is_full(&self) -> bool {
        self.len >= WRITE_PIECE || self.frames.len() >= MAX_FRAMES
    }

    pub(super) fn take(&mut self) -> Vec<Bytes> {
        self.len = 0;
        std::mem::take(&mut self.frames)
    }
}

impl Sink {
    pub(super) fn new(dir: PathBuf, path: PathBuf, abandoned: Arc<Mutex<bool>>, durability: Durability) -> Sink {
        Sink {
            dir,
            path,
            abandoned,
            file: None,
            hasher: Sha256::new(),
            written: 0,
            durability,
        }
    }

    /// Hashes and writes `frames` (creating the file first if this is the first piece);
    /// when it is the `last` piece, also syncs the file if the durability says so and
    /// closes it, and the hash is final. Blocking.
    pub(super) fn write(mut self, frames: Vec<Bytes>, last: bool) -> Result<Sink, DiskError> {
        let mut file = match self.file.take() {
            Some(file) => file,
            None => {
                let abandoned = self.abandoned.lock().unwrap_or_else(|e| e.into_inner());
                if *abandoned {
                    let gone = std::io::Error::other("the download was abandoned");
                    return Err(("cannot create", self.path.clone(), gone));
                }
                create_part(&self.dir, &self.path)?
            }
        };
        for frame in &frames {
            self.hasher.update(frame);
        }
        let len = write_all_frames(&mut file, &frames).map_err(|e| ("writing", self.path.clone(), e))?;
        let whole = last && self.written == 0;
        if !whole && self.durability != Durability::None {
            start_writeback(&file, self.written, len);
        }
        self.written += len;
        match (last, self.durability) {
            // closed here, on the blocking thread
            (true, Durability::File) => file.sync_all().map_err(|e| ("syncing", self.path.clone(), e))?,
            (true, _) => {}
            (false, _) => self.file = Some(file),
        }
        Ok(self)
    }

    /// The SHA-256 of everything written, lower-case hex.
    pub(super) fn sha256(self) -> String {
        crate::ledger::hex(&self.hasher.finalize())
    }
}

/// Creates `path` in `dir`, making `dir` (and its parents) only when it is missing, so a
/// run pays for the folder once, not once per download.
fn create_part(dir: &Path, path: &Path) -> Result<std::fs::File, DiskError> {
    match std::fs::File::create(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| ("cannot create", dir.to_owned(), e))?;
            std::fs::File::create(path).map_err(|e| ("cannot create", path.to_owned(), e))
        }
        Err(e) => Err(("cannot create", path.to_owned(), e)),
    }
}

/// Starts the write-back of `len` bytes at `offset` of `file` (see the module docs).
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    if let Some(len) = std::num::NonZeroU64::new(len) {
        let _ = rustix::fs::fadvise(file, offset, Some(len), rustix::fs::Advice::DontNeed);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// Writes every frame with as few `writev` calls as the kernel allows, without copying
/// them into one buffer first; returns the bytes written.
fn write_all_frames(file: &mut std::fs::File, frames: &[Bytes]) -> std::io::Result<u64> {
    let total: usize = frames.iter().map(Bytes::len).sum();
    let mut slices: Vec<IoSlice<'_>> = frames
        .iter()
        .filter(|f| !f.is_empty())
        .map(|f| IoSlice::new(f))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total as u64)
}
