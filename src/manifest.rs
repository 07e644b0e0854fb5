//! The manifest: `<out>/manifest.jsonl`, one JSON object a line, saying what happened to
//! every work.
//!
//! Every line carries `schema_version`, `run_id` and `record_type`:
//! - `"attempt"`: one HTTP attempt (the telemetry layer's attempt record);
//! - `"work"`: the outcome of one work ([`WorkRecord`]);
//! - `"rate"`: a provider's learned rate when it changed ([`RateRecord`]; the runner
//!   samples it once a second, and last before the summary, for `contentdownload report`);
//! - `"summary"`: the totals of a run, last ([`SummaryRecord`]).
//!
//! # Example
//!
//! ```
//! use contentdownload::manifest::{ManifestLine, Outcome, WorkRecord};
//!
//! let line = ManifestLine::work("run-1", WorkRecord::new("W1", Outcome::Downloaded));
//! let json = serde_json::to_string(&line).unwrap();
//! assert!(json.starts_with(r#"{"schema_version":1,"run_id":"run-1","record_type":"work","work_id":"W1""#));
//! let back: ManifestLine = serde_json::from_str(&json).unwrap();
//! assert_eq!(back, line);
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::append::LineAppender;
use crate::reason::ReasonCode;

/// The manifest's schema version, on every line.
pub const SCHEMA_VERSION: u32 = 1;

/// The manifest's file name inside the output folder.
pub const MANIFEST_FILE: &str = "manifest.jsonl";

/// What happened to a work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A valid PDF was downloaded in this run.
    Downloaded,
    /// Nothing to do: already downloaded (by an earlier run or another worker).
    Skipped,
    /// No valid PDF could be had.
    Failed,
    /// Put off; still deferred when the run ended.
    Deferred,
}

impl Outcome {
    /// Every outcome.
    pub const ALL: [Outcome; 4] = [
        Outcome::Downloaded,
        Outcome::Skipped,
        Outcome::Failed,
        Outcome::Deferred,
    ];

    /// The outcome's name, as the manifest (its serde name) and the ledger's `outcome`
    /// column write it: `downloaded`, `skipped`, `failed`, `deferred`.
    ///
    /// ```
    /// use contentdownload::manifest::Outcome;
    ///
    /// assert_eq!(Outcome::Downloaded.as_str(), "downloaded");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Downloaded => "downloaded",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
            Outcome::Deferred => "deferred",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkRecord {
    /// The work's id.
    pub work_id: String,
    /// What happened.
    pub outcome: Option<Outcome>,
    /// Why (for anything but a download).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<ReasonCode>,
    /// A few words more about the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The resolver whose candidate won.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolver: Option<String>,
    /// The URL the PDF came from (secrets in the query redacted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The file, relative to the output folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SHA-256 of the file, lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Time spent on the work in this run.
    pub elapsed_ms: u64,
    /// Candidate URLs tried.
    pub attempts: u32,
    /// The HTTP status behind an `http_status` reason (a 404 stays, a 503 may pass).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
}

impl WorkRecord {
    /// A record with an id and an outcome, the rest empty.
    pub fn new(work_id: impl Into<String>, outcome: Outcome) -> Self {
        WorkRecord {
            work_id: work_id.into(),
            outcome: Some(outcome),
            ..WorkRecord::default()
        }
    }

    /// Whether a later run may get what this one did not: a work deferred, or failed for a
    /// reason that may pass ([`ReasonCode::may_succeed_later`]).
    pub fn may_succeed_later(&self) -> bool {
        match self.outcome {
            Some(Outcome::Deferred) => true,
            Some(Outcome::Failed) | None => self
                .reason
                .unwrap_or(ReasonCode::Other)
                .may_succeed_later(self.http_status),
            Some(Outcome::Downloaded | Outcome::Skipped) => false,
        }
    }
}

/// A partition's learned rate at one moment: written when it changed since the last line
/// of its partition (by more than 1%, or its phase), so that `report` can draw each
/// provider's rate over time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RateRecord {
    /// When it was read, in milliseconds since the Unix epoch (wall clock).
    pub timestamp_ms: u64,
    /// The partition's provider (a resolver's name, or the host for PDF hosts).
    pub provider: String,
    /// The partition's host (`host[:port]`).
    pub host: String,
    /// The rate the limiter was set to, in requests per second.
    pub rate: f64,
    /// The most the rate goes back up to.
    pub ceiling: f64,
    /// `normal`, `reducing` or `recovering`.
    pub phase: String,
}

/// The totals of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryRecord {
    /// Works seen.
    pub works: u64,
    /// Downloaded in this run.
    pub downloaded: u64,
    /// Skipped (already there).
    pub skipped: u64,
    /// Failed.
    pub failed: u64,
    /// Still deferred at the end.
    pub deferred: u64,
    /// Failures by reason.
    pub failed_by_reason: BTreeMap<ReasonCode, u64>,
    /// Bytes downloaded in this run.
    pub bytes: u64,
    /// Wall time of the run.
    pub elapsed_ms: u64,
    /// Input lines that could not be read.
    pub input_errors: u64,
    /// Whether the run was interrupted before it finished.
    pub interrupted: bool,
    /// Works failed or deferred for a reason a later run may fix (the network, a server
    /// error, a provider's wait, our disk): [`WorkRecord::may_succeed_later`].
    #[serde(default)]
    pub retry_later: u64,
    /// Works the run's [`WorkFilter`](crate::input::WorkFilter) left out before any
    /// request (`--only-oa`, the years, `--type`), by why; not counted in `works`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered: BTreeMap<crate::input::Skip, u64>,
    /// Per resolver: works it was asked about, answers taken from the ledger's memory
    /// instead, and PDFs downloaded from its candidates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub resolvers: BTreeMap<String, ResolverCounts>,
    /// Works still deferred at the end, by why (a provider's allowance spent or its wait
    /// too long: `rate_limited`, `cooling_down`, `throttled`, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub deferred_by_reason: BTreeMap<ReasonCode, u64>,
}

/// What one resolver did in a run ([`SummaryRecord::resolvers`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResolverCounts {
    /// Works it was asked about (a request made, whatever came of it).
    pub asked: u64,
    /// Works whose answer was taken from the ledger instead (no request).
    pub cached: u64,
    /// Works whose PDF was downloaded from one of its candidates.
    pub pdfs: u64,
}

impl SummaryRecord {
    /// Adds resolvers' asked and from-memory counts (the PDFs are counted by [`add`](Self::add)).
    pub fn add_resolver_counts(&mut self, counts: &BTreeMap<String, ResolverCounts>) {
        for (name, c) in counts {
            let mine = self.resolvers.entry(name.clone()).or_default();
            mine.asked += c.asked;
            mine.cached += c.cached;
            mine.pdfs += c.pdfs;
        }
    }

    /// Counts one work's outcome.
    pub fn add(&mut self, record: &WorkRecord) {
        self.works += 1;
        self.retry_later += u64::from(record.may_succeed_later());
        match record.outcome {
            Some(Outcome::Downloaded) => {
                self.downloaded += 1;
                self.bytes += record.bytes.unwrap_or(0);
                if let Some(resolver) = &record.resolver {
                    self.resolvers.entry(resolver.clone()).or_default().pdfs += 1;
                }
            }
            Some(Outcome::Skipped) => self.skipped += 1,
            Some(Outcome::Deferred) => {
                self.deferred += 1;
                *self
                    .deferred_by_reason
                    .entry(record.reason.unwrap_or(ReasonCode::Deferred))
                    .or_default() += 1;
            }
            Some(Outcome::Failed) | None => {
                self.failed += 1;
                *self
                    .failed_by_reason
                    .entry(record.reason.unwrap_or(ReasonCode::Other))
                    .or_default() += 1;
            }
        }
    }
}

/// One line of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestLine {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The run that wrote it.
    pub run_id: String,
    /// The record.
    #[serde(flatten)]
    pub record: ManifestRecord,
}

/// The records a manifest line can hold, tagged by `record_type`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record_type", rename_all = "snake_case")]
pub enum ManifestRecord {
    /// One HTTP attempt, as the telemetry layer records it (kept as JSON here so that the
    /// manifest does not fix the attempt record's fields).
    Attempt(serde_json::Map<String, serde_json::Value>),
    /// One work's outcome.
    Work(WorkRecord),
    /// A provider's learned rate, when it changed.
    Rate(RateRecord),
    /// The run's totals.
    Summary(SummaryRecord),
}

impl ManifestLine {
    /// A `work` line.
    pub fn work(run_id: &str, record: WorkRecord) -> Self {
        ManifestLine {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.to_owned(),
            record: ManifestRecord::Work(record),
        }
    }

    /// A `rate` line.
    pub fn rate(run_id: &str, record: RateRecord) -> Self {
        ManifestLine {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.to_owned(),
            record: ManifestRecord::Rate(record),
        }
    }

    /// A `summary` line.
    pub fn summary(run_id: &str, record: SummaryRecord) -> Self {
        ManifestLine {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.to_owned(),
            record: ManifestRecord::Summary(record),
        }
    }
}

/// How often a running [`Pipeline`](crate::pipeline::Pipeline) syncs the manifest to disk.
pub const MANIFEST_SYNC_EVERY: Duration = Duration::from_secs(1);

/// Appends lines to `manifest.jsonl`, buffered. Earlier runs' lines are kept: the manifest
/// is the history of the folder.
///
/// Three levels of "written": [`write`](ManifestWriter::write) buffers in memory;
/// [`write_out`](ManifestWriter::write_out) hands the buffer to the operating system (cheap:
/// the lines survive the process dying); [`flush`](ManifestWriter::flush) also syncs the
/// file to disk (they survive the machine dying). A run writes out often, syncs once a
/// second ([`MANIFEST_SYNC_EVERY`], through [`sync_handle`](ManifestWriter::sync_handle), off
/// the lock) and flushes at its end, Ctrl-C included. After a power loss or kernel crash the
/// last second of lines may be missing; the ledger, which commits every outcome, is the
/// source of truth then, and a re-run skips what it recorded as done.
///
/// Several processes may share the folder and so the manifest: lines are buffered whole and
/// written out as whole lines, one locked `O_APPEND` write per batch
/// ([`LineAppender`], whose docs say why one shared file and
/// not one per process), so no line is ever spliced with another process's.
#[derive(Debug)]
pub struct ManifestWriter {
    out: LineAppender,
    /// Lines were written out since the last sync.
    unsynced: bool,
}

/// A pending sync of the manifest to disk, from [`ManifestWriter::sync_handle`]: run it
/// after releasing the writer's lock, on a thread that may block.
#[derive(Debug)]
pub struct ManifestSync(Arc<File>);

impl ManifestSync {
    /// Syncs the manifest's data to disk (`fdatasync`). Blocks.
    pub fn sync(self) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Lines buffered beyond this are written out at once, whatever the run's rhythm.
const MAX_BUFFERED: usize = 1 << 20;

impl ManifestWriter {
    /// Opens (or creates) `<dir>/manifest.jsonl` for appending.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let out = LineAppender::open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open the manifest {}: {e}", path.display())))?;
        Ok(ManifestWriter { out, unsynced: false })
    }

    /// The manifest's path.
    pub fn path(&self) -> &Path {
        self.out.path()
    }

    /// Writes one line (buffered; written out at once when much is buffered).
    pub fn write(&mut self, line: &ManifestLine) -> io::Result<()> {
        // serialised apart, so that a failure leaves no half line in the buffer
        let mut bytes = serde_json::to_vec(line)?;
        bytes.push(b'\n');
        self.write_bytes(&bytes)
    }

    /// Writes one whole serialised line (ending in a newline).
    fn write_bytes(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        if self.out.pending() >= MAX_BUFFERED {
            self.write_out()?;
        }
        Ok(())
    }

    /// Writes a value that serialises to a JSON object as an `attempt` line, adding
    /// `schema_version`, `run_id` and `record_type`.
    pub fn write_attempt<T: Serialize>(&mut self, run_id: &str, attempt: &T) -> io::Result<()> {
        let mut map = match serde_json::to_value(attempt)? {
            serde_json::Value::Object(map) => map,
            other => {
                let mut m = serde_json::Map::new();
                m.insert("value".into(), other);
                m
            }
        };
        // the line carries these at the top level already
        map.remove("record_type");
        map.remove("schema_version");
        map.remove("run_id");
        self.write(&ManifestLine {
            schema_version: SCHEMA_VERSION,
            run_id: run_id.to_owned(),
            record: ManifestRecord::Attempt(map),
        })
    }

    /// Hands the buffered lines to the operating system (whole lines, one locked append),
    /// without waiting for the disk.
    pub fn write_out(&mut self) -> io::Result<()> {
        if self.out.write_out()? {
            self.unsynced = true;
        }
        Ok(())
    }

    /// Writes the buffered lines out and, if anything was written out since the last sync,
    /// returns the sync to run once the writer is released (`None`: nothing to sync).
    pub fn sync_handle(&mut self) -> io::Result<Option<ManifestSync>> {
        self.write_out()?;
        if !std::mem::take(&mut self.unsynced) {
            return Ok(None);
        }
        Ok(Some(ManifestSync(self.out.file().clone())))
    }

    /// Writes the buffer out and syncs the file.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.write_out()?;
        self.unsynced = false;
        self.out.sync()
    }
}

/// A manifest shared by the pipeline (work lines) and the telemetry writer (attempt lines).
pub type SharedManifest = std::sync::Arc<std::sync::Mutex<ManifestWriter>>;

/// An attempt line as [`ManifestWriter::write_attempt`] writes it, byte for byte, without
/// building a `serde_json::Value` first: that way cost about 24,500 instructions per
/// attempt (a map of owned keys and values, three removals, a flattened enum, the drop),
/// this one about 7,600, on the writer thread of a bulk run that has two cores for
/// everything (callgrind, 2,000 PDFs). The fields after `record_type` are in the order of that map (sorted by
/// name); `the_attempt_line_is_the_generic_one` checks that both write the same bytes.
#[derive(Serialize)]
struct AttemptLine<'a> {
    schema_version: u32,
    run_id: &'a str,
    record_type: &'static str,
    attempt: u32,
    bytes: u64,
    cooldown_wait_us: Option<u64>,
    elapsed_us: u64,
    head_us: Option<u64>,
    method: &'a str,
    operation: crate::context::OperationType,
    provider: &'a str,
    ratelimit_wait_us: Option<u64>,
    reason: Option<&'a str>,
    retry_after_us: Option<u64>,
    status: Option<u16>,
    timestamp_ms: u64,
    ttfb_us: Option<u64>,
    url: &'a str,
    work_id: Option<&'a str>,
}

impl<'a> AttemptLine<'a> {
    fn of(run_id: &'a str, r: &'a crate::layers::telemetry::AttemptRecord) -> Self {
        AttemptLine {
            schema_version: SCHEMA_VERSION,
            run_id,
            record_type: "attempt",
            attempt: r.attempt,
            bytes: r.bytes,
            cooldown_wait_us: r.cooldown_wait_us,
            elapsed_us: r.elapsed_us,
            head_us: r.head_us,
            method: &r.method,
            operation: r.operation,
            provider: &r.provider,
            ratelimit_wait_us: r.ratelimit_wait_us,
            reason: r.reason.as_deref(),
            retry_after_us: r.retry_after_us,
            status: r.status,
            timestamp_ms: r.timestamp_ms,
            ttfb_us: r.ttfb_us,
            url: &r.url,
            work_id: r.work_id.as_deref(),
        }
    }
}

impl AttemptLine<'_> {
    /// The line as `serde_json::to_writer` writes it, byte for byte, with the field names
    /// written as they are: serde_json escapes each name as it would any string, which was
    /// about half of the line's cost (callgrind, bulk_bench 2,000 files: the names are 230
    /// of the line's ~400 bytes). The values still go through serde_json (escaping,
    /// numbers). `the_attempt_line_is_the_generic_one` checks the bytes.
    fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        fn field<T: Serialize + ?Sized>(out: &mut Vec<u8>, name: &[u8], value: &T) -> serde_json::Result<()> {
            out.extend_from_slice(name);
            serde_json::to_writer(&mut *out, value)
        }
        field(out, b"{\"schema_version\":", &self.schema_version)?;
        field(out, b",\"run_id\":", self.run_id)?;
        field(out, b",\"record_type\":", self.record_type)?;
        field(out, b",\"attempt\":", &self.attempt)?;
        field(out, b",\"bytes\":", &self.bytes)?;
        field(out, b",\"cooldown_wait_us\":", &self.cooldown_wait_us)?;
        field(out, b",\"elapsed_us\":", &self.elapsed_us)?;
        field(out, b",\"head_us\":", &self.head_us)?;
        field(out, b",\"method\":", self.method)?;
        field(out, b",\"operation\":", &self.operation)?;
        field(out, b",\"provider\":", self.provider)?;
        field(out, b",\"ratelimit_wait_us\":", &self.ratelimit_wait_us)?;
        field(out, b",\"reason\":", &self.reason)?;
        field(out, b",\"retry_after_us\":", &self.retry_after_us)?;
        field(out, b",\"status\":", &self.status)?;
        field(out, b",\"timestamp_ms\":", &self.timestamp_ms)?;
        field(out, b",\"ttfb_us\":", &self.ttfb_us)?;
        field(out, b",\"url\":", self.url)?;
        field(out, b",\"work_id\":", &self.work_id)?;
        out.push(b'}');
        Ok(())
    }
}

/// A telemetry [`RecordSink`](crate::layers::telemetry::RecordSink) that writes each attempt
/// record to the manifest as an `attempt` line.
#[derive(Debug)]
pub struct ManifestSink {
    manifest: SharedManifest,
    run_id: String,
}

impl ManifestSink {
    /// A sink writing to `manifest` under `run_id`.
    pub fn new(manifest: SharedManifest, run_id: impl Into<String>) -> Self {
        ManifestSink {
            manifest,
            run_id: run_id.into(),
        }
    }
}

impl crate::layers::telemetry::RecordSink for ManifestSink {
    fn write(&mut self, record: &crate::layers::telemetry::AttemptRecord) -> io::Result<()> {
        // serialised before the lock is taken: the pipeline's own lines wait on it
        let mut line = Vec::with_capacity(512);
        AttemptLine::of(&self.run_id, record).write_json(&mut line)?;
        line.push(b'\n');
        let mut m = self.manifest.lock().unwrap_or_else(|e| e.into_inner());
        m.write_bytes(&line)
    }

    /// Syncs the manifest to disk; the lock is not held during the sync.
    fn flush(&mut self) -> io::Result<()> {
        let sync = self.manifest.lock().unwrap_or_else(|e| e.into_inner()).sync_handle()?;
        sync.map_or(Ok(()), ManifestSync::sync)
    }

    /// Writes the manifest's buffer out to the operating system; no sync (a running
    /// pipeline syncs once a second, and at its end).
    fn write_out(&mut self) -> io::Result<()> {
        self.manifest.lock().unwrap_or_else(|e| e.into_inner()).write_out()
    }
}

/// Reads a manifest back (for tests and `status`): the lines that parse, and the number
/// of lines that did not.
pub fn read_manifest(path: &Path) -> io::Result<(Vec<ManifestLine>, usize)> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = Vec::new();
    let mut bad = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str(line) {
            Ok(l) => lines.push(l),
            Err(_) => bad += 1,
        }
    }
    Ok((lines, bad))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names the manifest and the ledger hold: the serde name, and the lower-cased
    /// Debug form the ledger's `outcome` column was written with before `as_str`.
    #[test]
    fn outcome_names_are_those_written_before() {
        for o in Outcome::ALL {
            assert_eq!(serde_json::to_value(o).unwrap(), o.as_str());
            assert_eq!(format!("{o:?}").to_ascii_lowercase(), o.as_str());
        }
    }

    /// A summary line written before the per-resolver counts reads, with none.
    #[test]
    fn an_old_summary_line_still_reads() {
        let old = r#"{"schema_version":1,"run_id":"r","record_type":"summary","works":2,"downloaded":1,"skipped":0,"failed":1,"deferred":0,"failed_by_reason":{"no_candidates":1},"bytes":10,"elapsed_ms":5,"input_errors":0,"interrupted":false}"#;
        let line: ManifestLine = serde_json::from_str(old).unwrap();
        let ManifestRecord::Summary(s) = line.record else {
            panic!("not a summary: {line:?}")
        };
        assert!(s.resolvers.is_empty());
        assert_eq!(s.downloaded, 1);
        // and a new one without resolvers writes no `resolvers` field
        assert!(!serde_json::to_string(&s).unwrap().contains("resolvers"));
    }

    #[test]
    fn the_summary_counts_pdfs_per_resolver() {
        let mut s = SummaryRecord::default();
        s.add(&WorkRecord {
            resolver: Some("unpaywall".into()),
            ..WorkRecord::new("W1", Outcome::Downloaded)
        });
        s.add(&WorkRecord::new("W2", Outcome::Failed));
        s.add(&WorkRecord {
            reason: Some(ReasonCode::RateLimited),
            ..WorkRecord::new("W3", Outcome::Deferred)
        });
        assert_eq!(s.deferred_by_reason, BTreeMap::from([(ReasonCode::RateLimited, 1)]));
        let asked = BTreeMap::from([
            (
                "unpaywall".to_owned(),
                ResolverCounts {
                    asked: 2,
                    cached: 1,
                    pdfs: 0,
                },
            ),
            (
                "crossref".to_owned(),
                ResolverCounts {
                    asked: 1,
                    cached: 0,
                    pdfs: 0,
                },
            ),
        ]);
        s.add_resolver_counts(&asked);
        assert_eq!(
            s.resolvers["unpaywall"],
            ResolverCounts {
                asked: 2,
                cached: 1,
                pdfs: 1
            }
        );
        assert_eq!(
            s.resolvers["crossref"],
            ResolverCounts {
                asked: 1,
                cached: 0,
                pdfs: 0
            }
        );
    }

    #[test]
    fn writes_and_reads_every_record_type() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ManifestWriter::open(dir.path()).unwrap();
        let mut rec = WorkRecord::new("W1", Outcome::Failed);
        rec.reason = Some(ReasonCode::HtmlLandingPage);
        let mut summary = SummaryRecord::default();
        summary.add(&rec);
        summary.add(&WorkRecord::new("W2", Outcome::Skipped));
        w.write_attempt("r", &serde_json::json!({"status": 200, "url": "http://x/"}))
            .unwrap();
        w.write(&ManifestLine::work("r", rec.clone())).unwrap();
        let rate = RateRecord {
            timestamp_ms: 1_700_000_000_000,
            provider: "openalex".into(),
            host: "api.openalex.org".into(),
            rate: 4.9,
            ceiling: 10.0,
            phase: "reducing".into(),
        };
        w.write(&ManifestLine::rate("r", rate.clone())).unwrap();
        w.write(&ManifestLine::summary("r", summary.clone())).unwrap();
        w.flush().unwrap();
        drop(w);
        std::fs::write(
            dir.path().join("other"),
            std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap() + "garbage\n",
        )
        .unwrap();
        let (lines, bad) = read_manifest(&dir.path().join("other")).unwrap();
        assert_eq!(bad, 1);
        assert_eq!(lines.len(), 4);
        assert!(matches!(&lines[0].record, ManifestRecord::Attempt(m) if m["status"] == 200));
        assert_eq!(lines[1].record, ManifestRecord::Work(rec));
        assert_eq!(lines[2].record, ManifestRecord::Rate(rate));
        assert_eq!(lines[3].record, ManifestRecord::Summary(summary.clone()));
        assert_eq!(summary.failed_by_reason[&ReasonCode::HtmlLandingPage], 1);
        let raw = std::fs::read_to_string(dir.path().join(MANIFEST_FILE)).unwrap();
        assert!(raw
            .lines()
            .all(|l| l.contains("\"schema_version\":1") && l.contains("\"run_id\":\"r\"")));
        assert!(raw.contains("\"record_type\":\"summary\""));
        assert!(raw.contains("\"record_type\":\"rate\""));
    }

    /// The sink's attempt line is the generic `write_attempt` line, byte for byte, with
    /// every field set and with every optional one empty (a field added to the record and
    /// not to `AttemptLine` fails here).
    #[test]
    fn the_attempt_line_is_the_generic_one() {
        use crate::context::OperationType;
        use crate::layers::telemetry::{AttemptRecord, RecordSink};
        let full = AttemptRecord {
            schema_version: 1,
            timestamp_ms: 1_700_000_000_000,
            run_id: Some("other".into()),
            work_id: Some("W\"1".into()),
            operation: OperationType::Download,
            provider: "p".into(),
            method: "GET".into(),
            url: "https://h.example/a?b=<redacted>".into(),
            status: Some(429),
            reason: Some("429".into()),
            attempt: 2,
            elapsed_us: 10,
            head_us: Some(3),
            ttfb_us: Some(4),
            bytes: 5,
            ratelimit_wait_us: Some(6),
            cooldown_wait_us: Some(7),
            retry_after_us: Some(8),
        };
        let empty = AttemptRecord {
            run_id: None,
            work_id: None,
            status: None,
            reason: None,
            head_us: None,
            ttfb_us: None,
            ratelimit_wait_us: None,
            cooldown_wait_us: None,
            retry_after_us: None,
            ..full.clone()
        };
        for record in [full, empty] {
            let mut written = Vec::new();
            AttemptLine::of("r", &record).write_json(&mut written).unwrap();
            assert_eq!(
                String::from_utf8(written).unwrap(),
                serde_json::to_string(&AttemptLine::of("r", &record)).unwrap()
            );
            let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
            let mut generic = ManifestWriter::open(a.path()).unwrap();
            generic.write_attempt("r", &record).unwrap();
            generic.flush().unwrap();
            let shared = Arc::new(std::sync::Mutex::new(ManifestWriter::open(b.path()).unwrap()));
            let mut sink = ManifestSink::new(shared.clone(), "r");
            sink.write(&record).unwrap();
            sink.flush().unwrap();
            let read = |d: &tempfile::TempDir| std::fs::read_to_string(d.path().join(MANIFEST_FILE)).unwrap();
            assert_eq!(read(&b), read(&a));
            assert_eq!(
                read_manifest(&b.path().join(MANIFEST_FILE)).unwrap(),
                read_manifest(&a.path().join(MANIFEST_FILE)).unwrap()
            );
        }
    }

    #[test]
    fn written_out_lines_are_visible_and_synced_once() {
        use crate::layers::telemetry::RecordSink;
        let dir = tempfile::tempdir().unwrap();
        let shared = Arc::new(std::sync::Mutex::new(ManifestWriter::open(dir.path()).unwrap()));
        let path = dir.path().join(MANIFEST_FILE);
        let mut sink = ManifestSink::new(shared.clone(), "r");
        // nothing to sync yet
        assert!(shared.lock().unwrap().sync_handle().unwrap().is_none());
        shared
            .lock()
            .unwrap()
            .write(&ManifestLine::work("r", WorkRecord::new("W1", Outcome::Downloaded)))
            .unwrap();
        // buffered: not in the file yet; written out: there for readers, without a sync
        assert_eq!(read_manifest(&path).unwrap().0.len(), 0);
        sink.write_out().unwrap();
        assert_eq!(read_manifest(&path).unwrap().0.len(), 1);
        // the lines written out are synced once, then there is nothing left to sync
        let sync = shared.lock().unwrap().sync_handle().unwrap();
        sync.expect("lines written out since the last sync").sync().unwrap();
        assert!(shared.lock().unwrap().sync_handle().unwrap().is_none());
        // the sink's flush writes out and syncs what is buffered
        shared
            .lock()
            .unwrap()
            .write(&ManifestLine::work("r", WorkRecord::new("W2", Outcome::Failed)))
            .unwrap();
        RecordSink::flush(&mut sink).unwrap();
        assert_eq!(read_manifest(&path).unwrap().0.len(), 2);
        assert!(shared.lock().unwrap().sync_handle().unwrap().is_none());
    }
}
