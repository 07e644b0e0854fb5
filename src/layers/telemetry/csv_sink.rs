//! [`CsvSink`]: attempt records as CSV rows, through the `csv` crate (feature `csv`, on
//! with the runner).

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use super::record::{AttemptRecord, RecordSink, SCHEMA_VERSION};
use crate::append::{same_file, LineAppender};
use crate::context::OperationType;

/// Writes CSV rows (with a header row first) through the `csv` crate.
pub struct CsvSink<W: Write = File> {
    out: csv::Writer<W>,
}

impl<W: Write> fmt::Debug for CsvSink<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CsvSink").finish_non_exhaustive()
    }
}

impl CsvSink {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        // csv::Writer buffers on its own.
        Ok(CsvSink::new(File::create(path)?))
    }

    /// Appends to the file at `path`, so that it keeps every run's attempts (each row has its
    /// `run_id`). The header row is written at once when the file is new or empty (so a run
    /// without a single attempt still leaves a file with its header). A file whose header is
    /// not this version's (an older layout) is not mixed with new rows: it is moved aside to
    /// `<stem>.<UTC timestamp>.<ext>` (`attempts.20261122T081952Z.csv`), with a warning, and a
    /// new file is started.
    ///
    /// Several processes may append to one file at once: the header is decided and written
    /// under the file's lock (one header however many start together on an empty file), and
    /// rows go out as whole rows, one locked `O_APPEND` write per batch (see
    /// [`LineAppender`]).
    pub fn append(path: impl AsRef<Path>) -> io::Result<CsvSink<LineAppender>> {
        let path = path.as_ref();
        let header = csv_header()?;
        // bounded: another process may move the file aside between our open and our lock
        for _ in 0..5 {
            let out = LineAppender::open(path)?;
            let opened = out.with_lock(|file| {
                if !same_file(file, path)? {
                    return Ok(false);
                }
                let write = |bytes: &[u8]| {
                    let mut f = file;
                    f.write_all(bytes)
                };
                match first_line(path)? {
                    None => write(format!("{header}\n").as_bytes())?,
                    Some(found) if found.trim_end_matches(['\r', '\n']) == header => {
                        if !ends_with_newline(path)? {
                            // the last row of a run that stopped mid-write: do not glue the
                            // next one to it
                            write(b"\n")?;
                        }
                    }
                    Some(_) => {
                        let aside = set_aside(path)?;
                        tracing::warn!(
                            file = %path.display(),
                            moved_to = %aside.display(),
                            "the attempts file has another header (an older version's layout); it was moved aside and a new one started"
                        );
                        return Ok(false);
                    }
                }
                Ok(true)
            })?;
            if opened {
                return Ok(CsvSink {
                    out: csv::WriterBuilder::new().has_headers(false).from_writer(out),
                });
            }
        }
        Err(io::Error::other(format!(
            "cannot open {}: it keeps being moved aside or replaced",
            path.display()
        )))
    }
}

/// This version's CSV header row (without the line end).
fn csv_header() -> io::Result<String> {
    let probe = AttemptRecord {
        schema_version: SCHEMA_VERSION,
        timestamp_ms: 0,
        run_id: None,
        work_id: None,
        operation: OperationType::Download,
        provider: String::new(),
        method: String::new(),
        url: String::new(),
        status: None,
        reason: None,
        attempt: 0,
        elapsed_us: 0,
        head_us: None,
        ttfb_us: None,
        bytes: 0,
        ratelimit_wait_us: None,
        cooldown_wait_us: None,
        retry_after_us: None,
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.serialize(&probe).map_err(csv_to_io)?;
    let bytes = w.into_inner().map_err(|e| io::Error::other(e.to_string()))?;
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

/// The file's first line with its line end, or `None` if it is missing or empty.
fn first_line(path: &Path) -> io::Result<Option<String>> {
    use std::io::{BufRead, Read};
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut line = Vec::new();
    // a header is short; a first "line" longer than this is not ours
    io::BufReader::new(file).take(64 * 1024).read_until(b'\n', &mut line)?;
    Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()))
}

fn ends_with_newline(path: &Path) -> io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(path)?;
    if file.seek(SeekFrom::End(0))? == 0 {
        return Ok(true);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] == b'\n')
}

/// Renames `path` to `<stem>.<UTC timestamp>[-n].<ext>` beside it; returns the new path.
fn set_aside(path: &Path) -> io::Result<std::path::PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let stamp = utc_stamp(secs);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    // bounded: a hundred set-asides in one second would be a loop elsewhere
    for n in 0..100 {
        let suffix = if n == 0 { String::new() } else { format!("-{n}") };
        let aside = path.with_file_name(format!("{stem}.{stamp}{suffix}{ext}"));
        if !aside.exists() {
            std::fs::rename(path, &aside)?;
            return Ok(aside);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "cannot move {} aside: too many files of the same second",
            path.display()
        ),
    ))
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds (the civil calendar from days, after Howard
/// Hinnant's `civil_from_days`; written here to avoid a date crate for one file name).
fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

impl<W: Write> CsvSink<W> {
    /// Writes to any writer.
    pub fn new(out: W) -> Self {
        CsvSink {
            out: csv::Writer::from_writer(out),
        }
    }
}

impl<W: Write + Send + 'static> RecordSink for CsvSink<W> {
    fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
        self.out.serialize(record).map_err(csv_to_io)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn csv_to_io(err: csv::Error) -> io::Error {
    match err.into_kind() {
        csv::ErrorKind::Io(e) => e,
        other => io::Error::other(format!("could not write an attempt record as CSV: {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::layers::telemetry::record::sample;

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_763_799_592), "20251122T081952Z");
    }

    fn append_rows(path: &Path, records: &[AttemptRecord]) {
        let mut sink = CsvSink::append(path).unwrap();
        for r in records {
            sink.write(r).unwrap();
        }
        RecordSink::flush(&mut sink).unwrap();
    }

    #[test]
    fn appending_keeps_one_header_and_every_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts.csv");
        let run = |id: &str, n: u32| -> Vec<AttemptRecord> {
            (1..=n)
                .map(|i| AttemptRecord {
                    run_id: Some(id.into()),
                    ..sample(i)
                })
                .collect()
        };
        append_rows(&path, &run("run-1", 2));
        // an empty file counts as new
        std::fs::write(dir.path().join("empty.csv"), "").unwrap();
        append_rows(&dir.path().join("empty.csv"), &run("run-0", 1));
        // a run that stopped mid-row: the next row starts on its own line
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("1,17");
        std::fs::write(&path, text).unwrap();
        append_rows(&path, &run("run-2", 3));

        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("schema_version").count(), 1, "{text}");
        let mut reader = csv::ReaderBuilder::new().flexible(true).from_path(&path).unwrap();
        let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
        let ids: Vec<&str> = rows.iter().filter(|r| r.len() > 2).map(|r| &r[2]).collect();
        assert_eq!(ids, ["run-1", "run-1", "run-2", "run-2", "run-2"]);
        let empty = std::fs::read_to_string(dir.path().join("empty.csv")).unwrap();
        assert!(empty.starts_with("schema_version,"), "{empty}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "nothing set aside");
    }

    #[test]
    fn a_run_without_attempts_still_writes_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts.csv");
        drop(CsvSink::append(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), csv_header().unwrap() + "\n");
    }

    /// Threads stand for processes starting together on one empty file: one header between
    /// them, and every row whole.
    #[test]
    fn processes_starting_together_write_one_header_and_whole_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts.csv");
        let start = Arc::new(std::sync::Barrier::new(6));
        let threads: Vec<_> = (0..6u32)
            .map(|w| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    let mut sink = CsvSink::append(&path).unwrap();
                    for i in 0..300u32 {
                        let record = AttemptRecord {
                            run_id: Some(format!("run-{w}")),
                            url: format!("https://example.org/{}", "p".repeat((i as usize * 53) % 3000)),
                            ..sample(i)
                        };
                        sink.write(&record).unwrap();
                        if i % 7 == 0 {
                            sink.write_out().unwrap();
                        }
                    }
                    RecordSink::flush(&mut sink).unwrap();
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("schema_version").count(), 1);
        assert!(text.starts_with(&csv_header().unwrap()));
        let mut reader = csv::Reader::from_path(&path).unwrap();
        let rows: Vec<AttemptRecord> = reader.deserialize().collect::<Result<_, _>>().unwrap();
        assert_eq!(rows.len(), 6 * 300);
        for r in &rows {
            assert_eq!(
                r.url.len(),
                "https://example.org/".len() + (r.attempt as usize * 53) % 3000
            );
        }
    }

    #[test]
    fn a_file_with_another_header_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attempts.csv");
        let old = "timestamp_ms,provider,status\n1,crossref,429\n";
        std::fs::write(&path, old).unwrap();
        append_rows(&path, &[sample(1)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&csv_header().unwrap()), "{text}");
        assert!(!text.contains("1,crossref,429"), "{text}");
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "attempts.csv")
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert!(
            aside[0].starts_with("attempts.") && aside[0].ends_with("Z.csv"),
            "{aside:?}"
        );
        assert_eq!(std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(), old);
    }

    #[test]
    fn csv_round_trips_with_a_header() {
        let mut sink = CsvSink::new(Vec::new());
        let records: Vec<_> = (1..=3).map(sample).collect();
        for r in &records {
            sink.write(r).unwrap();
        }
        RecordSink::flush(&mut sink).unwrap();
        let bytes = sink.out.into_inner().map_err(|e| e.into_error()).unwrap();
        let mut reader = csv::Reader::from_reader(&bytes[..]);
        assert_eq!(reader.headers().unwrap().get(0), Some("schema_version"));
        let back: Vec<AttemptRecord> = reader.deserialize().collect::<Result<_, _>>().unwrap();
        assert_eq!(back, records);
    }
}
