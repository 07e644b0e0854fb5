//! [`LineAppender`]: whole lines appended to a file that several processes share (the
//! manifest, `attempts.csv`).
//!
//! # Why one shared file, appended under a lock, and not a file per process?
//!
//! Several runners may share one `--out` folder (and one ledger). Each could write its own
//! `manifest.<run-id>.jsonl`, but then every reader (`status`, [`read_manifest`], a user's
//! `jq` or `tail -f`) would have to find and merge files, and a folder that sees a run a day
//! would collect hundreds of them. Appending to the one file keeps the manifest what it was,
//! the folder's history in one place, as long as no line is ever spliced with another. So:
//!
//! - lines are collected in memory, whole, and handed to the file only as whole lines;
//! - the file is opened with `O_APPEND`, so every `write` lands at the end of the file as it
//!   is at that moment, never over another process's bytes;
//! - each batch goes out in one `write` call (the kernel serialises writes to one file, so
//!   on a local file system a batch is not interleaved with another process's), and under an
//!   exclusive advisory lock (`flock`), so that a short write continued by a second call (a
//!   nearly full disk, a signal), or a file system that does not serialise appends, still
//!   cannot let another cooperating writer's bytes in between;
//! - decisions about the file's content (is the CSV header there yet?) are taken under the
//!   same lock ([`LineAppender::with_lock`]), so two processes starting at once on an empty
//!   file write one header between them.
//!
//! The lock is `flock(2)` through `rustix` (already in the dependency tree through
//! `tempfile`): `std::fs::File::lock` would do, but it is stable only since Rust 1.89 and
//! the crate's MSRV is 1.88. Where `flock` is not supported (some network file systems), the
//! appender warns once and relies on `O_APPEND` alone. On other platforms than Unix there is
//! no lock; appends there are single writes to an append-mode file.
//!
//! [`read_manifest`]: crate::manifest::read_manifest
//!
//! # Example
//!
//! ```
//! use std::io::Write;
//! use contentdownload::append::LineAppender;
//!
//! # fn main() -> std::io::Result<()> {
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("lines.txt");
//! let mut a = LineAppender::open(&path)?;
//! let mut b = LineAppender::open(&path)?; // another process, say
//! writeln!(a, "one")?;
//! writeln!(b, "two")?;
//! writeln!(a, "three")?;
//! assert!(a.write_out()?); // one locked write: "one\nthree\n"
//! assert!(b.write_out()?);
//! assert!(!b.write_out()?); // nothing left
//! assert_eq!(std::fs::read_to_string(&path)?, "one\nthree\ntwo\n");
//! # Ok(()) }
//! ```

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Appends whole lines to a file shared with other processes: what is written through
/// [`Write`] is kept in memory until [`write_out`](LineAppender::write_out) (or
/// [`Write::flush`]) hands it to the file in one locked `O_APPEND` write. Write only whole
/// lines between two write-outs. See the [module docs](self) for why.
#[derive(Debug)]
pub struct LineAppender {
    path: PathBuf,
    file: Arc<File>,
    buf: Vec<u8>,
    /// A write failed part way: the file may end in a partial line, so the next batch
    /// starts with a line end.
    torn: bool,
}

impl LineAppender {
    /// Opens (creating if needed) `path` for appending (and reading, for checks under the
    /// lock).
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = OpenOptions::new().create(true).read(true).append(true).open(&path)?;
        Ok(LineAppender {
            path,
            file: Arc::new(file),
            buf: Vec::new(),
            torn: false,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, shared: for syncing it without holding the appender.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes waiting for [`write_out`](LineAppender::write_out).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Hands the lines written so far to the file: one `write` under the file's exclusive
    /// lock. Returns whether there was anything to write. On an error the lines are dropped
    /// (the error says so), and the next batch starts on a line of its own.
    pub fn write_out(&mut self) -> io::Result<bool> {
        if self.buf.is_empty() {
            return Ok(false);
        }
        let mut batch = std::mem::take(&mut self.buf);
        if self.torn {
            batch.insert(0, b'\n');
        }
        let written = self.with_lock(|mut file| file.write_all(&batch));
        self.torn = written.is_err();
        // keep the allocation for the next batch
        batch.clear();
        self.buf = batch;
        written.map(|()| true)
    }

    /// Runs `f` on the file while holding its exclusive lock: decide about the file's
    /// content here (whether a header is needed, say) so that other processes do not
    /// decide the same at the same time.
    pub fn with_lock<T>(&self, f: impl FnOnce(&File) -> io::Result<T>) -> io::Result<T> {
        let _guard = lock::Exclusive::take(&self.file, &self.path)?;
        f(&self.file)
    }

    /// Syncs the file's data to disk (`fdatasync`); does not write out what is pending.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

impl Write for LineAppender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    /// Writes out (see [`write_out`](LineAppender::write_out)); no sync.
    fn flush(&mut self) -> io::Result<()> {
        self.write_out().map(|_| ())
    }
}

/// Whether `path` still names the file open as `file` (it was not renamed or replaced since
/// it was opened). `true` where this cannot be told.
pub(crate) fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let open = file.metadata()?;
        match std::fs::metadata(path) {
            Ok(named) => Ok(open.dev() == named.dev() && open.ino() == named.ino()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (file, path);
        Ok(true)
    }
}

/// Warned once per process that `flock` is not available.
static UNLOCKED_WARNED: AtomicBool = AtomicBool::new(false);

fn warn_unlocked(path: &Path, err: &dyn std::fmt::Display) {
    if !UNLOCKED_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            file = %path.display(),
            "cannot lock the file ({err}); appending without a lock (O_APPEND only)"
        );
    }
}

#[cfg(unix)]
mod lock {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    use rustix::fs::{flock, FlockOperation};
    use rustix::io::Errno;

    /// An exclusive `flock` on a file, released on drop.
    pub(super) struct Exclusive<'a>(Option<&'a File>);

    impl<'a> Exclusive<'a> {
        pub(super) fn take(file: &'a File, path: &Path) -> io::Result<Exclusive<'a>> {
            // bounded: a signal storm is not a reason to spin forever
            for _ in 0..100 {
                match flock(file, FlockOperation::LockExclusive) {
                    Ok(()) => return Ok(Exclusive(Some(file))),
                    Err(Errno::INTR) => continue,
                    Err(e @ (Errno::NOLCK | Errno::NOTSUP | Errno::INVAL)) => {
                        super::warn_unlocked(path, &e);
                        return Ok(Exclusive(None));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Err(io::Error::new(
                io::ErrorKind::Interrupted,
                format!("cannot lock {}: interrupted again and again", path.display()),
            ))
        }
    }

    impl Drop for Exclusive<'_> {
        fn drop(&mut self) {
            if let Some(file) = self.0 {
                // closing the file would release it too; an error here leaves nothing to do
                let _ = flock(file, FlockOperation::Unlock);
            }
        }
    }
}

#[cfg(not(unix))]
mod lock {
    use std::fs::File;
    use std::io;
    use std::path::Path;

    /// No advisory lock on this platform: appends are single writes in append mode.
    pub(super) struct Exclusive;

    impl Exclusive {
        pub(super) fn take(_file: &File, path: &Path) -> io::Result<Exclusive> {
            super::warn_unlocked(path, &"no flock on this platform");
            Ok(Exclusive)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Threads stand for processes: each has its own open file (its own lock holder) and
    /// writes long lines in batches; every line must come out whole.
    #[test]
    fn concurrent_appenders_never_splice_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.jsonl");
        const WRITERS: usize = 8;
        const LINES: usize = 400;
        let threads: Vec<_> = (0..WRITERS)
            .map(|w| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut out = LineAppender::open(&path).unwrap();
                    for i in 0..LINES {
                        // lines of varied length, some longer than a page and than BufWriter's 8 KiB
                        let pad = "x".repeat((i * 37 + w * 101) % 12_000);
                        let line = serde_json::json!({"writer": w, "line": i, "pad": pad});
                        serde_json::to_writer(&mut out, &line).unwrap();
                        out.write_all(b"\n").unwrap();
                        if i % (w + 1) == 0 {
                            out.write_out().unwrap();
                        }
                    }
                    out.flush().unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = vec![Vec::new(); WRITERS];
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("spliced line ({e})"));
            let (w, i) = (
                v["writer"].as_u64().unwrap() as usize,
                v["line"].as_u64().unwrap() as usize,
            );
            assert_eq!(v["pad"].as_str().unwrap().len(), (i * 37 + w * 101) % 12_000);
            seen[w].push(i);
        }
        for (w, lines) in seen.iter().enumerate() {
            // every line once, each writer's lines in its own order
            assert_eq!(*lines, (0..LINES).collect::<Vec<_>>(), "writer {w}");
        }
    }

    #[test]
    fn a_failed_write_is_followed_by_a_line_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        let mut a = LineAppender::open(&path).unwrap();
        writeln!(a, "one").unwrap();
        a.write_out().unwrap();
        // as after a write that failed part way
        a.torn = true;
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"partial")
            .unwrap();
        writeln!(a, "two").unwrap();
        a.flush().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one\npartial\ntwo\n");
        assert_eq!(a.pending(), 0);
        assert!(same_file(a.file(), &path).unwrap());
        std::fs::rename(&path, dir.path().join("g.txt")).unwrap();
        assert!(!same_file(a.file(), &path).unwrap());
    }
}
