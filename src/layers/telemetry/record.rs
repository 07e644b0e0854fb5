//! Attempt records: one serde record per HTTP attempt, and the sinks that store them.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::context::OperationType;

/// The version of the [`AttemptRecord`] layout; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// What happened on one HTTP attempt, written when its response body ended or was dropped
/// (or when the attempt failed without a response).
///
/// Durations are whole microseconds; the URL is redacted (see
/// [`Redactor`](super::Redactor)). The layout is flat so that the same record serialises to
/// a JSON line and to a CSV row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// [`SCHEMA_VERSION`] at the time of writing.
    pub schema_version: u32,
    /// When the attempt started, in milliseconds since the Unix epoch (wall clock).
    pub timestamp_ms: u64,
    /// The run this attempt belongs to, if the layer was given one.
    pub run_id: Option<String>,
    /// The work the request served ([`WorkId`](crate::context::WorkId)), if known.
    pub work_id: Option<String>,
    /// The operation type.
    pub operation: OperationType,
    /// The provider ([`Provider`](crate::context::Provider), or the host).
    pub provider: String,
    /// The request method.
    pub method: String,
    /// The request URL with secrets redacted and userinfo dropped.
    pub url: String,
    /// The response status, if a response arrived.
    pub status: Option<u16>,
    /// Why the attempt did not succeed, if it did not: the status code for a 4xx/5xx
    /// (`"429"`), an error class (`"connect_error"`, `"read_timeout"`, `"cooling_down"`, ...,
    /// the same values as the span's `error.type`), or `"body_dropped"` when the caller
    /// stopped reading the body before its end.
    pub reason: Option<String>,
    /// Which attempt of the operation this was (1 for the first send).
    pub attempt: u32,
    /// From the start of the attempt until its body ended (or it failed).
    pub elapsed_us: u64,
    /// Until the response head arrived.
    pub head_us: Option<u64>,
    /// Until the first byte of the body arrived (time to first byte).
    pub ttfb_us: Option<u64>,
    /// Body bytes streamed to the caller.
    pub bytes: u64,
    /// How long the rate limiter held the attempt ([`RateLimitWait`](crate::context::RateLimitWait));
    /// `None` when it did not hold it.
    pub ratelimit_wait_us: Option<u64>,
    /// How long a cool-down held the attempt ([`CooldownWait`](crate::context::CooldownWait));
    /// `None` when none held it.
    pub cooldown_wait_us: Option<u64>,
    /// How long the provider asked us to wait ([`RetryAfterHint`](crate::context::RetryAfterHint)).
    pub retry_after_us: Option<u64>,
}

/// Where attempt records go. Implementations may block on I/O: they run on the
/// [`RecordWriter`](super::RecordWriter)'s own thread, never on the request path.
pub trait RecordSink: Send + 'static {
    /// Stores one record.
    fn write(&mut self, record: &AttemptRecord) -> io::Result<()>;
    /// Makes everything written so far durable (or at least visible to readers).
    fn flush(&mut self) -> io::Result<()>;
    /// Called when the writer's queue has run empty (in a busy run, every 20 ms; see
    /// [`RecordWriter`](super::RecordWriter)): hands what is buffered to the operating
    /// system (visible to readers, kept if the process dies) without waiting for the disk.
    /// The default is [`flush`](RecordSink::flush); a sink whose `flush` syncs to disk
    /// should override it and leave syncing to `flush` (see
    /// [`ManifestSink`](crate::manifest::ManifestSink)).
    fn write_out(&mut self) -> io::Result<()> {
        self.flush()
    }
}

impl<S: RecordSink + ?Sized> RecordSink for Box<S> {
    fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
        (**self).write(record)
    }

    fn flush(&mut self) -> io::Result<()> {
        (**self).flush()
    }

    fn write_out(&mut self) -> io::Result<()> {
        (**self).write_out()
    }
}

/// Both sinks get every record (a JSONL manifest and a CSV table from one writer, say);
/// the first error is returned after both were tried.
impl<A: RecordSink, B: RecordSink> RecordSink for (A, B) {
    fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
        let first = self.0.write(record);
        let second = self.1.write(record);
        first.and(second)
    }

    fn flush(&mut self) -> io::Result<()> {
        let first = self.0.flush();
        let second = self.1.flush();
        first.and(second)
    }

    fn write_out(&mut self) -> io::Result<()> {
        let first = self.0.write_out();
        let second = self.1.write_out();
        first.and(second)
    }
}

/// Writes one JSON object per line.
///
/// # Example
///
/// ```no_run
/// use contentdownload::layers::telemetry::{JsonlSink, RecordWriter};
/// # fn demo() -> std::io::Result<()> {
/// let writer = RecordWriter::spawn(JsonlSink::create("attempts.jsonl")?, 1024);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct JsonlSink<W: Write = BufWriter<File>> {
    out: W,
}

impl JsonlSink {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        Ok(JsonlSink::new(BufWriter::new(File::create(path)?)))
    }

    /// Appends to the file at `path`, creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        Ok(JsonlSink::new(BufWriter::new(file)))
    }
}

impl<W: Write> JsonlSink<W> {
    /// Writes to any writer.
    pub fn new(out: W) -> Self {
        JsonlSink { out }
    }

    /// The writer inside.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send + 'static> RecordSink for JsonlSink<W> {
    fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record)?;
        self.out.write_all(b"\n")
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Keeps records in memory, for tests. Clones share the same list.
#[derive(Clone, Debug, Default)]
pub struct MemorySink {
    records: Arc<Mutex<Vec<AttemptRecord>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        MemorySink::default()
    }

    /// A copy of the records written so far.
    pub fn records(&self) -> Vec<AttemptRecord> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl RecordSink for MemorySink {
    fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record.clone());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn sample(attempt: u32) -> AttemptRecord {
    AttemptRecord {
        schema_version: SCHEMA_VERSION,
        timestamp_ms: 1_700_000_000_000 + u64::from(attempt),
        run_id: Some("run-1".into()),
        work_id: if attempt.is_multiple_of(2) {
            None
        } else {
            Some("W1, \"quoted\"".into())
        },
        operation: OperationType::ManifestFetch,
        provider: "crossref".into(),
        method: "GET".into(),
        url: "https://api.crossref.org/works?mailto=REDACTED&rows=2".into(),
        status: if attempt == 3 { None } else { Some(429) },
        reason: Some("429".into()),
        attempt,
        elapsed_us: 1234,
        head_us: Some(1000),
        ttfb_us: None,
        bytes: 0,
        ratelimit_wait_us: Some(5),
        cooldown_wait_us: None,
        retry_after_us: Some(2_000_000),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips() {
        let mut sink = JsonlSink::new(Vec::new());
        let records: Vec<_> = (1..=3).map(sample).collect();
        for r in &records {
            sink.write(r).unwrap();
        }
        let text = String::from_utf8(sink.into_inner()).unwrap();
        let back: Vec<AttemptRecord> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(back, records);
        assert!(text.contains("\"operation\":\"manifest_fetch\""));
    }

    #[test]
    fn a_pair_and_a_box_forward_every_record() {
        let (a, b) = (MemorySink::new(), MemorySink::new());
        let mut both: Box<dyn RecordSink> = Box::new((a.clone(), b.clone()));
        both.write(&sample(1)).unwrap();
        both.flush().unwrap();
        assert_eq!(a.records(), vec![sample(1)]);
        assert_eq!(b.records(), vec![sample(1)]);
    }
}
