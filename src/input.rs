//! Where the works come from: a JSON Lines file (plain or gzipped), standard input, or a
//! directory tree such as the OpenAlex snapshot.
//!
//! The OpenAlex snapshot ships its works as gzipped JSON Lines parts,
//! `works/updated_date=YYYY-MM-DD/part_NNN.gz`, next to a `manifest` file. [`Input::open`]
//! takes the snapshot's `works` folder (or any folder) and reads every `*.jsonl`,
//! `*.jsonl.gz` and `*.gz` file under it, in the order of their paths (so the dates and part
//! numbers come in order and a rerun reads the same works in the same order). Hidden files
//! and folders (`.name`) and everything else (the `manifest`, `*.json`) are left alone.
//!
//! A file is gunzipped when it *starts* like gzip (the two magic bytes), whatever its name,
//! so `-` (standard input) can be piped either way; concatenated gzip members, as `cat
//! a.gz b.gz` makes them, read as one stream. Everything streams: memory holds one line at a
//! time, and a line longer than [`MAX_LINE_BYTES`] is an error for that line, not an
//! allocation the input chooses.
//!
//! ```
//! use std::io::Write;
//! use contentdownload::input::Input;
//!
//! let dir = tempfile::tempdir()?;
//! let part = dir.path().join("updated_date=2024-01-01");
//! std::fs::create_dir(&part)?;
//! let mut gz = flate2::write::GzEncoder::new(
//!     std::fs::File::create(part.join("part_000.gz"))?,
//!     flate2::Compression::fast(),
//! );
//! writeln!(gz, r#"{{"id": "https://openalex.org/W1", "doi": "10.1/a"}}"#)?;
//! gz.finish()?;
//! std::fs::write(part.join("manifest"), "not a part")?;
//!
//! let input = Input::open(dir.path())?;
//! assert_eq!(input.files().len(), 1);
//! let works: Vec<_> = input.works().collect::<Result<_, _>>()?;
//! assert_eq!(works[0].id, "W1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::works::{read_doi_list, read_works_jsonl, LineError, Work};

pub use crate::works::MAX_LINE_BYTES;

/// An input that cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A file or folder cannot be read.
    #[error("cannot read the input {}: {source}", path.display())]
    Unreadable {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A folder holds no JSON Lines files.
    #[error("the input folder {} holds no *.jsonl, *.jsonl.gz or *.gz files", path.display())]
    EmptyFolder {
        /// The folder.
        path: PathBuf,
    },
}

/// What `--input`/`--dois` names: standard input (`-`), one file, or the files of a folder.
#[derive(Clone, Debug)]
pub struct Input {
    files: Vec<PathBuf>,
    stdin: bool,
    read: Arc<AtomicU64>,
}

/// How far the reading of an [`Input`] has come, from [`Input::progress`]: a handle that
/// stays valid while the works are read (on another task).
#[derive(Clone, Debug)]
pub struct InputProgress {
    read: Arc<AtomicU64>,
    total: Option<u64>,
}

impl InputProgress {
    /// Bytes read from the files so far (compressed bytes for gzipped parts).
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// The share of the input read, `0.0..=1.0`, when its size is known (not for stdin).
    pub fn fraction(&self) -> Option<f64> {
        let total = self.total.filter(|t| *t > 0)?;
        Some((self.read() as f64 / total as f64).min(1.0))
    }
}

impl Input {
    /// Standard input for `-`; the JSON Lines files under a folder, in path order; or the
    /// file itself. Fails if the path cannot be read or a folder holds no such file.
    pub fn open(path: &Path) -> Result<Input, InputError> {
        if path == Path::new("-") {
            return Ok(Input {
                files: Vec::new(),
                stdin: true,
                read: Arc::default(),
            });
        }
        let meta = std::fs::metadata(path).map_err(|source| InputError::Unreadable {
            path: path.to_owned(),
            source,
        })?;
        if !meta.is_dir() {
            return Ok(Input {
                files: vec![path.to_owned()],
                stdin: false,
                read: Arc::default(),
            });
        }
        let mut files = Vec::new();
        let walk = walkdir::WalkDir::new(path)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.'));
        for entry in walk {
            let entry = entry.map_err(|e| {
                let at = e.path().unwrap_or(path).to_owned();
                InputError::Unreadable {
                    path: at,
                    source: e.into(),
                }
            })?;
            if entry.file_type().is_file() && is_jsonl_name(entry.file_name()) {
                files.push(entry.into_path());
            }
        }
        if files.is_empty() {
            return Err(InputError::EmptyFolder { path: path.to_owned() });
        }
        Ok(Input {
            files,
            stdin: false,
            read: Arc::default(),
        })
    }

    /// The files that will be read, in order (empty for standard input).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Their total size on disk in bytes (compressed size for gzipped parts), or `None` for
    /// standard input: what a progress display can measure the reading against.
    pub fn total_bytes(&self) -> Option<u64> {
        if self.stdin {
            return None;
        }
        Some(
            self.files
                .iter()
                .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
                .sum(),
        )
    }

    /// A handle on how much of the input has been read, for a progress display.
    pub fn progress(&self) -> InputProgress {
        InputProgress {
            read: self.read.clone(),
            total: self.total_bytes(),
        }
    }

    /// The OpenAlex works of every file in turn. A file that cannot be opened, or a line
    /// that is not a work, is one `Err` naming the file and line; reading goes on with the
    /// next line or file.
    pub fn works(self) -> impl Iterator<Item = Result<Work, LineError>> + Send {
        self.each(read_works_jsonl)
    }

    /// The DOIs (one a line, `#` comments) of every file in turn, as [`works`](Self::works).
    pub fn dois(self) -> impl Iterator<Item = Result<Work, LineError>> + Send {
        self.each(read_doi_list)
    }

    fn each<I, F>(self, read: F) -> impl Iterator<Item = Result<Work, LineError>> + Send
    where
        F: Fn(Box<dyn BufRead + Send>) -> I + Send,
        I: Iterator<Item = Result<Work, LineError>> + Send + 'static,
    {
        let sources: Vec<Option<PathBuf>> = if self.stdin {
            vec![None]
        } else {
            self.files.into_iter().map(Some).collect()
        };
        let many = sources.len() > 1;
        let counter = self.read;
        sources.into_iter().flat_map(move |source| {
            let name = source.as_ref().filter(|_| many).map(|p| p.display().to_string());
            let opened = open_reader(source.as_deref(), counter.clone());
            let items: Box<dyn Iterator<Item = Result<Work, LineError>> + Send> = match opened {
                Ok(reader) => Box::new(read(reader).map(move |item| {
                    item.map_err(|mut e| {
                        if let Some(name) = &name {
                            e.message = format!("{name}: {}", e.message);
                        }
                        e
                    })
                })),
                Err(e) => Box::new(std::iter::once(Err(LineError {
                    line: 0,
                    message: e.to_string(),
                }))),
            };
            items
        })
    }
}

impl fmt::Display for Input {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.stdin, self.files.as_slice()) {
            (true, _) => f.write_str("standard input"),
            (false, [one]) => write!(f, "{}", one.display()),
            (false, files) => write!(f, "{} files", files.len()),
        }
    }
}

/// Which works a run keeps, decided from the record alone, before any request:
/// `--only-oa`, `--year-start`/`--year-end` and `--type`.
///
/// A filter judges what the record says; where it says nothing (a work known only by its DOI
/// has no year, type or open-access flag) the work is kept, since only a request could tell.
///
/// ```
/// use contentdownload::input::{Skip, WorkFilter};
/// use contentdownload::works::Work;
///
/// let closed = serde_json::json!({
///     "id": "https://openalex.org/W1", "publication_year": 2019, "type": "article",
///     "open_access": {"is_oa": false},
/// });
/// let work = Work::from_openalex(&closed).unwrap();
/// let filter = WorkFilter { only_oa: true, ..WorkFilter::default() };
/// assert_eq!(filter.skips(&work), Some(Skip::NotOpenAccess));
/// let filter = WorkFilter { year_start: Some(2020), ..WorkFilter::default() };
/// assert_eq!(filter.skips(&work), Some(Skip::Year));
/// let filter = WorkFilter { types: vec!["Article".into()], ..WorkFilter::default() };
/// assert_eq!(filter.skips(&work), None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkFilter {
    /// Skip works whose record says no open-access copy is known (`open_access.is_oa:
    /// false`, or an OpenAlex record with neither the flag nor any location).
    pub only_oa: bool,
    /// Skip works published before this year.
    pub year_start: Option<i32>,
    /// Skip works published after this year.
    pub year_end: Option<i32>,
    /// Keep only these OpenAlex types (`article`, `preprint`, ...; any case). Empty keeps all.
    pub types: Vec<String>,
}

/// Why a [`WorkFilter`] skipped a work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Skip {
    /// `--only-oa`, and the record knows no open-access copy.
    NotOpenAccess,
    /// Outside `--year-start`..`--year-end`.
    Year,
    /// Not one of the `--type`s.
    Type,
}

impl Skip {
    /// The name used in the summary: `not_open_access`, `year`, `type`.
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::NotOpenAccess => "not_open_access",
            Skip::Year => "year",
            Skip::Type => "type",
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl WorkFilter {
    /// Whether the filter keeps everything (no request-free check to make).
    pub fn is_empty(&self) -> bool {
        *self == WorkFilter::default()
    }

    /// `None` to keep `work`, or why it is skipped.
    pub fn skips(&self, work: &Work) -> Option<Skip> {
        if self.only_oa {
            let from_record = !work.id.starts_with("doi:");
            let closed = match work.is_oa {
                Some(is_oa) => !is_oa,
                None => from_record && work.candidates.is_empty(),
            };
            if closed {
                return Some(Skip::NotOpenAccess);
            }
        }
        if let Some(year) = work.publication_year {
            if self.year_start.is_some_and(|start| year < start) || self.year_end.is_some_and(|end| year > end) {
                return Some(Skip::Year);
            }
        }
        if let (false, Some(t)) = (self.types.is_empty(), work.work_type.as_deref()) {
            if !self.types.iter().any(|want| want.eq_ignore_ascii_case(t)) {
                return Some(Skip::Type);
            }
        }
        None
    }
}

/// Counts the bytes read from the file (before gunzipping), for [`InputProgress`].
struct Counting {
    inner: Box<dyn Read + Send>,
    read: Arc<AtomicU64>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn is_jsonl_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.ends_with(".jsonl") || name.ends_with(".gz")
}

/// A buffered reader over `path` (standard input for `None`), gunzipped if it starts with
/// gzip's magic bytes.
fn open_reader(path: Option<&Path>, read: Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>, InputError> {
    let raw: Box<dyn Read + Send> = match path {
        None => Box::new(io::stdin()),
        Some(p) => Box::new(File::open(p).map_err(|source| InputError::Unreadable {
            path: p.to_owned(),
            source,
        })?),
    };
    let raw = Counting { inner: raw, read };
    let mut buffered = BufReader::with_capacity(256 * 1024, raw);
    let gzipped = buffered
        .fill_buf()
        .map(|head| head.starts_with(&[0x1f, 0x8b]))
        .unwrap_or(false);
    Ok(if gzipped {
        Box::new(BufReader::with_capacity(
            256 * 1024,
            flate2::bufread::MultiGzDecoder::new(buffered),
        ))
    } else {
        Box::new(buffered)
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gz(path: &Path, text: &str) {
        let mut enc = flate2::write::GzEncoder::new(File::create(path).unwrap(), flate2::Compression::fast());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
    }

    fn record(n: u32) -> String {
        format!("{{\"id\": \"https://openalex.org/W{n}\"}}\n")
    }

    #[test]
    fn a_snapshot_tree_reads_in_path_order_and_skips_what_is_not_a_part() {
        let dir = tempfile::tempdir().unwrap();
        let works = dir.path().join("works");
        for (date, parts) in [("updated_date=2024-02-01", 2), ("updated_date=2023-12-31", 2)] {
            std::fs::create_dir_all(works.join(date)).unwrap();
            for p in 0..parts {
                let base = if date.ends_with("31") { 0 } else { 10 };
                gz(
                    &works.join(date).join(format!("part_{p:03}.gz")),
                    &format!("{}{}", record(base + 2 * p), record(base + 2 * p + 1)),
                );
            }
        }
        std::fs::write(works.join("manifest"), "{\"entries\": []}").unwrap();
        std::fs::create_dir(works.join(".cache")).unwrap();
        gz(&works.join(".cache").join("part_999.gz"), &record(999));
        std::fs::write(works.join("extra.jsonl"), record(100)).unwrap();

        let input = Input::open(&works).unwrap();
        assert_eq!(input.files().len(), 5, "{:?}", input.files());
        let progress = input.progress();
        assert_eq!(progress.fraction(), Some(0.0));
        let ids: Vec<String> = input.works().map(|w| w.unwrap().id).collect();
        assert_eq!(
            ids,
            ["W100", "W0", "W1", "W2", "W3", "W10", "W11", "W12", "W13"],
            "extra.jsonl sorts before the date folders; dates and parts in order"
        );
        assert_eq!(progress.fraction(), Some(1.0), "every byte of every part was read");
    }

    #[test]
    fn gzip_is_recognised_by_its_bytes_and_members_concatenate() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.gz");
        let b = dir.path().join("b.gz");
        gz(&a, &record(1));
        gz(&b, &record(2));
        let mut both = std::fs::read(&a).unwrap();
        both.extend(std::fs::read(&b).unwrap());
        let odd = dir.path().join("works.jsonl"); // gzipped despite its name
        std::fs::write(&odd, both).unwrap();
        let ids: Vec<String> = Input::open(&odd).unwrap().works().map(|w| w.unwrap().id).collect();
        assert_eq!(ids, ["W1", "W2"]);
    }

    #[test]
    fn bad_lines_and_bad_files_name_their_file_and_reading_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), format!("{}not json\n", record(1))).unwrap();
        // a truncated gzip part: the error names it, the next file is still read
        let mut cut = Vec::new();
        {
            let mut enc = flate2::write::GzEncoder::new(&mut cut, flate2::Compression::fast());
            for n in 0..200 {
                enc.write_all(record(n).as_bytes()).unwrap();
            }
            enc.finish().unwrap();
        }
        cut.truncate(cut.len() / 2);
        std::fs::write(dir.path().join("b.gz"), cut).unwrap();
        std::fs::write(dir.path().join("c.jsonl"), record(3)).unwrap();

        let items: Vec<_> = Input::open(dir.path()).unwrap().works().collect();
        let errors: Vec<String> = items
            .iter()
            .filter_map(|i| i.as_ref().err())
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors[0].starts_with("line 2: ") && errors[0].contains("a.jsonl: not JSON"),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("b.gz")), "{errors:?}");
        assert_eq!(items.last().unwrap().as_ref().unwrap().id, "W3");
    }

    #[test]
    fn empty_and_missing_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("manifest"), "").unwrap();
        let e = Input::open(dir.path()).unwrap_err();
        assert!(e.to_string().contains("holds no *.jsonl"), "{e}");
        let e = Input::open(&dir.path().join("nope.jsonl")).unwrap_err();
        assert!(e.to_string().starts_with("cannot read the input"), "{e}");
    }

    #[test]
    fn filters_judge_what_the_record_says_and_keep_what_it_does_not() {
        let work = |v: serde_json::Value| Work::from_openalex(&v).unwrap();
        let open = work(
            serde_json::json!({"id": "W1", "publication_year": 2021, "type": "preprint",
            "open_access": {"is_oa": true}}),
        );
        let silent = work(serde_json::json!({"id": "W2"}));
        let located = work(serde_json::json!({"id": "W3",
            "best_oa_location": {"pdf_url": "https://example.org/a.pdf"}}));
        let doi = Work::from_doi("10.1/x").unwrap();
        let oa = WorkFilter {
            only_oa: true,
            ..WorkFilter::default()
        };
        assert_eq!(oa.skips(&open), None);
        assert_eq!(oa.skips(&silent), Some(Skip::NotOpenAccess), "no flag and no location");
        assert_eq!(oa.skips(&located), None);
        assert_eq!(oa.skips(&doi), None, "a bare DOI is unknown, not closed");

        let years = WorkFilter {
            year_start: Some(2020),
            year_end: Some(2021),
            ..WorkFilter::default()
        };
        assert_eq!(years.skips(&open), None);
        let late = WorkFilter {
            year_end: Some(2020),
            ..WorkFilter::default()
        };
        assert_eq!(late.skips(&open), Some(Skip::Year));
        assert_eq!(late.skips(&silent), None, "no year: kept");

        let types = WorkFilter {
            types: vec!["article".into(), "Preprint".into()],
            ..WorkFilter::default()
        };
        assert_eq!(types.skips(&open), None);
        let books = WorkFilter {
            types: vec!["book".into()],
            ..WorkFilter::default()
        };
        assert_eq!(books.skips(&open), Some(Skip::Type));
        assert!(WorkFilter::default().is_empty() && !books.is_empty());
    }

    #[test]
    fn an_overlong_line_is_an_error_and_the_next_line_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.jsonl");
        let mut f = File::create(&path).unwrap();
        let long = format!("{{\"id\": \"W1\", \"pad\": \"{}\"}}\n", "x".repeat(MAX_LINE_BYTES));
        f.write_all(long.as_bytes()).unwrap();
        f.write_all(record(2).as_bytes()).unwrap();
        drop(f);
        let items: Vec<_> = Input::open(&path).unwrap().works().collect();
        assert_eq!(items.len(), 2);
        let e = items[0].as_ref().unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        assert_eq!(items[1].as_ref().unwrap().id, "W2");
    }
}
