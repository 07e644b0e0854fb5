//! [`RecordWriter`]: hands attempt records to a sink on a background thread through a
//! bounded buffer, so the request path never waits on disk I/O.

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::record::{AttemptRecord, RecordSink};

enum Msg {
    Record(Box<AttemptRecord>),
    Flush(oneshot::Sender<io::Result<()>>),
    Close(oneshot::Sender<io::Result<()>>),
}

/// A handle to a background writer of [`AttemptRecord`]s.
///
/// Records go through a bounded channel to a dedicated thread that owns the
/// [`RecordSink`]; sending never blocks. When the buffer is full the record is dropped,
/// counted ([`dropped`](RecordWriter::dropped), and the `contentdownload.records.dropped`
/// metric when the layer has metrics) and reported with a warning (on the 1st, 2nd, 4th,
/// 8th... drop, so a long overload does not flood the log). The sink hands what it
/// buffered to the operating system ([`RecordSink::write_out`]: cheap, no wait for the
/// disk) once the buffer has run empty: at once after a quiet spell, and while records
/// stream in, every 20 ms (when the buffer has room for at least 256 records; a smaller one
/// is written out whenever it runs empty); it is flushed (synced, for sinks that sync) on
/// [`flush`](RecordWriter::flush) and [`close`](RecordWriter::close); call `close` at
/// shutdown so nothing buffered is lost.
///
/// Cloning is cheap: clones share the channel and the counters (behind an `Arc`). The
/// thread ends after `close`, or when the last clone is dropped.
///
/// # Example
///
/// ```
/// use contentdownload::layers::telemetry::{MemorySink, RecordWriter, TelemetryLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// let sink = MemorySink::new();
/// let writer = RecordWriter::spawn(sink.clone(), 4096);
/// let layer = TelemetryLayer::attempt().records(writer.clone());
/// // ... run requests through a stack with `layer` ...
/// writer.close().await?;
/// assert!(sink.records().is_empty());
/// # let _ = layer;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RecordWriter {
    shared: Arc<Shared>,
}

struct Shared {
    tx: mpsc::Sender<Msg>,
    capacity: usize,
    dropped: AtomicU64,
    write_errors: Arc<AtomicU64>,
}

impl fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordWriter")
            .field("capacity", &self.shared.capacity)
            .field("dropped", &self.dropped())
            .field("write_errors", &self.write_errors())
            .finish()
    }
}

impl RecordWriter {
    /// Starts a writer thread for `sink` with room for `capacity` records in flight
    /// (at least 1).
    pub fn spawn<S: RecordSink>(sink: S, capacity: usize) -> RecordWriter {
        let capacity = capacity.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = Arc::clone(&write_errors);
        // The thread logs to the caller's subscriber, a thread-local default included. With
        // none at all, it is left to the global default, which may be set later.
        let dispatch =
            tracing::dispatcher::get_default(|d| (!d.is::<tracing::subscriber::NoSubscriber>()).then(|| d.clone()));
        let spawned = std::thread::Builder::new()
            .name("contentdownload-records".into())
            .spawn(move || match dispatch {
                Some(dispatch) => tracing::dispatcher::with_default(&dispatch, || run(sink, rx, &errors, capacity)),
                None => run(sink, rx, &errors, capacity),
            });
        if let Err(e) = spawned {
            // The receiver went down with the closure: every record will count as dropped.
            tracing::warn!(error = %e, "could not start the attempt-record writer thread; records will be dropped");
        }
        RecordWriter {
            shared: Arc::new(Shared {
                tx,
                capacity,
                dropped: AtomicU64::new(0),
                write_errors,
            }),
        }
    }

    /// Queues a record without waiting. Returns `false` (and counts the drop) when the
    /// buffer is full or the writer is closed.
    pub fn try_write(&self, record: AttemptRecord) -> bool {
        match self.shared.tx.try_send(Msg::Record(Box::new(record))) {
            Ok(()) => true,
            Err(err) => {
                let n = self.shared.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    let why = match err {
                        mpsc::error::TrySendError::Full(_) => {
                            "the buffer is full (raise its capacity or use a faster sink)"
                        }
                        mpsc::error::TrySendError::Closed(_) => "the writer is closed",
                    };
                    tracing::warn!(
                        dropped = n,
                        capacity = self.shared.capacity,
                        "attempt record dropped: {why}; {n} dropped so far"
                    );
                }
                false
            }
        }
    }

    /// How many records were dropped (full buffer or closed writer).
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// How many records the sink failed to write.
    pub fn write_errors(&self) -> u64 {
        self.shared.write_errors.load(Ordering::Relaxed)
    }

    /// Waits until every record queued before this call is written and the sink flushed.
    pub async fn flush(&self) -> io::Result<()> {
        self.request(Msg::Flush).await
    }

    /// Writes what is queued, flushes the sink and stops the thread. Records sent after
    /// this are dropped (and counted).
    pub async fn close(&self) -> io::Result<()> {
        self.request(Msg::Close).await
    }

    async fn request(&self, make: fn(oneshot::Sender<io::Result<()>>) -> Msg) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        if self.shared.tx.send(make(tx)).await.is_err() {
            return Err(closed());
        }
        rx.await.unwrap_or_else(|_| Err(closed()))
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the attempt-record writer is closed")
}

/// How long records gather in the buffer before the sink writes them out, once one has
/// come: a write-out per record was two locked appends (the manifest and `attempts.csv`,
/// six system calls) and a wake-up of this thread per record. A record that comes after a
/// quiet spell is written out at once. Only when the buffer holds at least
/// [`GATHER_MIN_CAPACITY`] records: while the thread waits, records pile up in the buffer,
/// and a small one would overflow (the runner's holds 4,096, which a bulk run fills in
/// about a second).
const GATHER: Duration = Duration::from_millis(20);

/// The smallest buffer whose records [`GATHER`] (smaller ones are written out whenever
/// they run empty).
const GATHER_MIN_CAPACITY: usize = 256;

/// While gathering, the thread looks at the buffer this often and stops waiting as soon
/// as it is half full.
const GATHER_STEP: Duration = Duration::from_millis(4);

fn run<S: RecordSink>(mut sink: S, mut rx: mpsc::Receiver<Msg>, errors: &AtomicU64, capacity: usize) {
    // A full disk fails every write-out, after almost every record: warned about on the
    // 1st, 2nd, 4th, 8th... failure, as drops are, not once per record.
    let mut write_out_failures: u64 = 0;
    let gather = capacity >= GATHER_MIN_CAPACITY;
    // when the sink last wrote out (`None`: not yet)
    let mut last_write_out: Option<Instant> = None;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            Msg::Record(record) => {
                write_record(&mut sink, &record, errors);
                if !rx.is_empty() {
                    continue;
                }
                if gather {
                    // Records come in a stream: let them gather for what is left of the
                    // interval since the last write-out (none after a quiet spell).
                    let due = last_write_out.map_or_else(Instant::now, |t| t + GATHER);
                    loop {
                        let now = Instant::now();
                        if now >= due || rx.len() >= capacity / 2 {
                            break;
                        }
                        std::thread::sleep(GATHER_STEP.min(due - now));
                    }
                    // what came meanwhile goes into this write-out; a flush or a close
                    // is answered in turn, after the records before it
                    if !rx.is_empty() {
                        continue;
                    }
                }
                last_write_out = Some(Instant::now());
                if let Err(e) = sink.write_out() {
                    write_out_failures += 1;
                    if write_out_failures.is_power_of_two() {
                        tracing::warn!(
                            error = %e,
                            failures = write_out_failures,
                            "could not flush attempt records; check the output file"
                        );
                    }
                }
            }
            Msg::Flush(ack) => {
                let _ = ack.send(sink.flush());
            }
            Msg::Close(ack) => {
                rx.close();
                // Write what was queued before the close, then acknowledge.
                let mut acks = vec![ack];
                while let Ok(msg) = rx.try_recv() {
                    match msg {
                        Msg::Record(record) => {
                            if sink.write(&record).is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Msg::Flush(ack) | Msg::Close(ack) => acks.push(ack),
                    }
                }
                let flushed = sink.flush();
                for ack in acks {
                    let _ = ack.send(
                        flushed
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                    );
                }
                return;
            }
        }
    }
    if let Err(e) = sink.flush() {
        tracing::warn!(error = %e, "could not flush attempt records at shutdown; check the output file");
    }
}

fn write_record<S: RecordSink>(sink: &mut S, record: &AttemptRecord, errors: &AtomicU64) {
    if let Err(e) = sink.write(record) {
        let n = errors.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            tracing::warn!(error = %e, failures = n, "could not write an attempt record; check the output file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::record::{sample, MemorySink};
    use super::*;
    use std::sync::mpsc as std_mpsc;

    /// A sink that waits for the test's permission before each write.
    struct Gate {
        go: std_mpsc::Receiver<()>,
        inner: MemorySink,
    }

    impl RecordSink for Gate {
        fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
            let _ = self.go.recv_timeout(std::time::Duration::from_secs(10));
            self.inner.write(record)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_full_buffer_is_counted_not_blocking() {
        let (go, gate) = std_mpsc::channel();
        let mem = MemorySink::new();
        let writer = RecordWriter::spawn(
            Gate {
                go: gate,
                inner: mem.clone(),
            },
            2,
        );
        let mut accepted = 0u32;
        for i in 1..=10 {
            if writer.try_write(sample(i)) {
                accepted += 1;
            }
        }
        // at most one record in the sink's hands plus two buffered
        assert!(accepted <= 3, "accepted {accepted}");
        assert_eq!(writer.dropped(), u64::from(10 - accepted));
        for _ in 0..accepted {
            go.send(()).unwrap();
        }
        writer.close().await.unwrap();
        assert_eq!(mem.records().len() as u32, accepted);
        // after close: dropped and counted, and flush says why
        assert!(!writer.try_write(sample(11)));
        assert_eq!(writer.dropped(), u64::from(11 - accepted));
        assert!(writer.flush().await.is_err());
    }

    /// A sink whose every write-out fails, as on a full disk; each says so on `tried`.
    struct Full {
        tried: std_mpsc::Sender<()>,
    }

    impl RecordSink for Full {
        fn write(&mut self, _: &AttemptRecord) -> io::Result<()> {
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn write_out(&mut self) -> io::Result<()> {
            let _ = self.tried.send(());
            Err(io::ErrorKind::StorageFull.into())
        }
    }

    /// Counts the warnings logged.
    #[derive(Clone, Default)]
    struct Warnings(Arc<AtomicU64>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::WARN {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    #[tokio::test]
    async fn a_sink_that_keeps_failing_is_warned_about_sparingly() {
        use tracing_subscriber::layer::SubscriberExt;
        let warnings = Warnings::default();
        let _log = tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
        // the writer thread logs to this (thread-local) subscriber too
        let (tried, write_outs) = std_mpsc::channel();
        let writer = RecordWriter::spawn(Full { tried }, 8);
        for i in 1..=64 {
            assert!(writer.try_write(sample(i)));
            // the queue runs empty after each record: one write-out each, failing
            write_outs
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the writer wrote the record out");
        }
        writer.close().await.unwrap();
        // on the 1st, 2nd, 4th, ... 64th failure
        assert_eq!(warnings.0.load(Ordering::Relaxed), 7);
    }

    /// A sink that keeps the records and says, at each write-out, how many it has.
    struct Counted {
        inner: MemorySink,
        written_out: std_mpsc::Sender<usize>,
    }

    impl RecordSink for Counted {
        fn write(&mut self, record: &AttemptRecord) -> io::Result<()> {
            self.inner.write(record)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
        fn write_out(&mut self) -> io::Result<()> {
            let _ = self.written_out.send(self.inner.records().len());
            Ok(())
        }
    }

    /// With room for a few hundred records, a record after a quiet spell is written out at
    /// once, without a flush, and a stream of records goes out in a few write-outs rather
    /// than one each (all of them, in order).
    #[tokio::test]
    async fn a_large_buffer_gathers_a_stream_of_records_into_few_write_outs() {
        let mem = MemorySink::new();
        let (tx, written_out) = std_mpsc::channel();
        let writer = RecordWriter::spawn(
            Counted {
                inner: mem.clone(),
                written_out: tx,
            },
            GATHER_MIN_CAPACITY * 16,
        );
        let wait = || {
            written_out
                .recv_timeout(std::time::Duration::from_secs(10))
                .expect("the records were written out without a flush")
        };
        assert!(writer.try_write(sample(1)));
        assert_eq!(wait(), 1);
        for i in 2..=200 {
            assert!(writer.try_write(sample(i)));
        }
        // the stream takes far less than the 20 ms of a gathering: one or two write-outs,
        // a handful on a loaded machine (without gathering, 199 when the writer keeps up
        // with the loop; often it does not, so this bound is a sanity check, and what
        // the test holds to is that every record comes out, in order, without a flush)
        let mut write_outs = 1;
        while wait() < 200 {
            write_outs += 1;
            assert!(write_outs <= 200, "every record comes out once");
        }
        assert!(write_outs <= 10, "{write_outs} write-outs for 199 records");
        let order: Vec<u64> = mem
            .records()
            .iter()
            .map(|r| r.timestamp_ms - 1_700_000_000_000)
            .collect();
        assert_eq!(order, (1..=200).collect::<Vec<u64>>());
        writer.close().await.unwrap();
        assert_eq!(writer.dropped(), 0);
    }

    #[tokio::test]
    async fn flush_waits_for_queued_records() {
        let mem = MemorySink::new();
        let writer = RecordWriter::spawn(mem.clone(), 64);
        for i in 1..=20 {
            assert!(writer.try_write(sample(i)));
        }
        writer.flush().await.unwrap();
        assert_eq!(mem.records().len(), 20);
        assert_eq!(writer.write_errors(), 0);
        assert!(format!("{writer:?}").contains("capacity: 64"));
    }
}
