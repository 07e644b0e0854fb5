//! Carrying out `run`, `status` and `fetch`: what the binary does, as library code so that
//! it can be tested.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, BoxStream, StreamExt};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

use super::args::{FetchArgs, RateSpec, ReportArgs, StatusArgs};
use super::rates::{print_rates, rate_rows, show_quota};
use super::settings::{RunSettings, Source};
use crate::context::{OperationType, Provider};
use crate::download::{DownloadOptions, Output};
use crate::error::BoxError;
use crate::input::{Input, InputProgress};
use crate::layers::learning::{InspectError, Learner, LearningPolicy};
use crate::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};
use crate::layers::telemetry::{CsvSink, RecordWriter};
use crate::ledger::{redact_url, LeaseOwner, Ledger, LedgerConfig, LedgerError};
use crate::manifest::{ManifestSink, ManifestWriter, SummaryRecord, MANIFEST_FILE};
use crate::pipeline::{ConfigError, Pipeline, PipelineConfig, PipelineError, Progress};
use crate::reason::ReasonCode;
use crate::report::{Report, REPORT_FILE};
use crate::resolvers::ResolverConfig;
use crate::service::{HttpClient, HttpConfig, HttpService, Stack, StackConfig};
use crate::works::{LineError, Work};

/// How a command ended, as a process exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Completed: every work was downloaded, skipped, or is definitely unavailable (a 404
    /// or 410, not a PDF, no candidate anywhere).
    Completed = 0,
    /// A fatal error (the output folder is not writable, the ledger is unreachable).
    Fatal = 1,
    /// A usage error.
    Usage = 2,
    /// Completed, but some works failed or were deferred for a reason a later run may fix
    /// (a connect error, a timeout, a 5xx, a 429 or a provider's wait, a write error such
    /// as a full disk): run the same command again later
    /// ([`ReasonCode::may_succeed_later`](crate::reason::ReasonCode::may_succeed_later)).
    RetryLater = 3,
    /// Interrupted (Ctrl-C); the run can be resumed.
    Interrupted = 130,
}

/// Per-provider politeness defaults; `--rate` replaces them, `--default-rate` replaces the
/// default of 5 req/s, burst 5 ([`RateLimitConfig::default`]).
fn default_rates() -> RateLimitConfig {
    RateLimitConfig::default()
        .provider("openalex", Quota::new(10.0, 5))
        .provider("unpaywall", Quota::new(10.0, 5))
        .provider("crossref", Quota::new(10.0, 5))
        .provider("europe_pmc", Quota::new(10.0, 5))
        .provider("pmc", Quota::new(3.0, 1))
        .provider("landing", Quota::new(5.0, 2))
        .provider("wayback", Quota::new(1.0, 1))
        // Semantic Scholar: an API key allows 1 request per second on every endpoint (its API
        // documentation); keyless clients share a pool, where 1/s is as polite
        .provider("semantic_scholar", Quota::new(1.0, 1))
        // CORE (API v3, which needs a key here): a registered personal key may send 25
        // requests a minute, within 1,000 tokens a day (CORE's v3 documentation, "Rate
        // limits", as other projects quote it)
        .provider("core", Quota::new(25.0 / 60.0, 1))
        // arXiv asks for one request every 3 seconds
        .provider("arxiv.org", Quota::new(1.0 / 3.0, 1))
        .provider("export.arxiv.org", Quota::new(1.0 / 3.0, 1))
}

/// The built-in rates, then the given keys (replacing a built-in key of the same name) and
/// the default.
fn rate_table(rates: &[RateSpec], default: Quota) -> RateLimitConfig {
    let mut cfg = default_rates();
    cfg.default = default;
    for spec in rates {
        cfg = cfg.provider(spec.key.clone(), spec.quota());
    }
    cfg
}

fn rate_config(settings: &RunSettings) -> RateLimitConfig {
    let mut cfg = rate_table(&settings.rates, settings.default_rate);
    cfg.max_in_flight = Some(settings.workers * settings.fallback.max_concurrent.max(1) + 8);
    cfg.max_per_host = Some(settings.max_per_host);
    // a download counts against --max-per-host until its body is read (the download keeps
    // the response's parts while it streams; every other body is read before the next
    // request to its host)
    cfg.host_slot_with_response = true;
    cfg
}

/// This process in the ledger: `host:pid:start:pidns:boot` ([`LeaseOwner`]), so that a re-run on
/// this host takes back the leases of a process that has ended at once.
fn worker_id() -> String {
    LeaseOwner::current().to_string()
}

/// A run id from the clock: `run-<unix seconds>-<pid>`.
pub fn generated_run_id() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("run-{secs}-{}", std::process::id())
}

/// Why a command did not complete: the one line the binary prints, and through
/// [`RunError::exit`] its exit status (decided there and nowhere else).
///
/// ```
/// use contentdownload::runner::exec::{Exit, RunError};
///
/// let e = RunError::Usage("cannot read the input works.jsonl: no such file".into());
/// assert_eq!(e.exit(), Exit::Usage);
/// assert_eq!(e.to_string(), "cannot read the input works.jsonl: no such file");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The command line or the input cannot be used; nothing was done.
    #[error("{0}")]
    Usage(String),
    /// A setting of the stack, the rate table or the client cannot be used.
    #[error("{0}")]
    Settings(#[source] BoxError),
    /// The pipeline's configuration cannot be used.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The ledger cannot be opened or used.
    #[error("{}", ledger_message(.url, .source))]
    Ledger {
        /// Its URL, the password redacted.
        url: String,
        /// Why.
        #[source]
        source: LedgerError,
    },
    /// A file or folder cannot be created, written or moved.
    #[error("{what}: {source}")]
    Io {
        /// What could not be done, and to which path.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The run stopped on a fatal error (the ledger or the manifest failed, downloads could
    /// not be made durable).
    #[error(transparent)]
    Pipeline(PipelineError),
    /// Anything else that stops the command (a learning file that cannot be inspected,
    /// `fetch`'s transfer).
    #[error("{0}")]
    Failed(#[source] BoxError),
}

impl RunError {
    /// The process's exit status for this failure: [`Exit::Usage`] for what the command
    /// line or its settings got wrong, [`Exit::RetryLater`] for a full disk (see
    /// [`disk_full`](Self::disk_full)), [`Exit::Fatal`] for the rest.
    pub fn exit(&self) -> Exit {
        match self {
            RunError::Usage(_) | RunError::Settings(_) | RunError::Config(_) => Exit::Usage,
            _ if self.disk_full() => Exit::RetryLater,
            RunError::Ledger { .. } | RunError::Io { .. } | RunError::Pipeline(_) | RunError::Failed(_) => Exit::Fatal,
        }
    }

    /// Whether a full disk (or a spent disk quota) caused this: of the output folder, the
    /// ledger's (SQLite's `SQLITE_FULL`, PostgreSQL's `disk_full`) or the state folder's.
    /// Nothing recorded is lost to it, and the same command run again once there is room
    /// goes on where this run stopped, so it is a reason to run again later, not a fatal
    /// error.
    pub fn disk_full(&self) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                ) {
                    return true;
                }
            }
            if let Some(sqlx::Error::Database(db)) = e.downcast_ref::<sqlx::Error>() {
                // SQLite's primary result code 13 is SQLITE_FULL; SQLSTATE 53100 is disk_full
                if matches!(db.code().as_deref(), Some("13" | "53100")) {
                    return true;
                }
            }
            cause = e.source();
        }
        false
    }

    fn io(what: String) -> impl FnOnce(std::io::Error) -> RunError {
        move |source| RunError::Io { what, source }
    }

    fn failed(e: impl Into<BoxError>) -> RunError {
        RunError::Failed(e.into())
    }

    /// The ledger at `url` cannot be opened.
    fn ledger(url: &str) -> impl FnOnce(LedgerError) -> RunError + '_ {
        move |source| RunError::Ledger {
            url: redact_url(url),
            source,
        }
    }
}

impl From<PipelineError> for RunError {
    fn from(e: PipelineError) -> RunError {
        match e {
            PipelineError::Config(c) => RunError::Config(c),
            e => RunError::Pipeline(e),
        }
    }
}

/// The message for a ledger that cannot be opened: the ledger's own when it already names
/// the ledger (unreachable), otherwise prefixed with its URL (password redacted).
fn ledger_message(url: &str, e: &LedgerError) -> String {
    match e {
        LedgerError::Unreachable { .. } => e.to_string(),
        e => format!("the ledger {url} cannot be used: {e}"),
    }
}

/// `contentdownload run`. Returns the exit status, or why the run could not complete.
pub async fn run(settings: RunSettings, shutdown: impl std::future::Future<Output = ()>) -> Result<Exit, RunError> {
    // a missing input is a usage error, found before anything is created on disk
    let input = match &settings.source {
        Source::Works(path) | Source::Dois(path) => {
            Some(Input::open(path).map_err(|e| RunError::Usage(e.to_string()))?)
        }
        Source::Topic { .. } => None,
    };
    let output = output(&settings)?;
    if settings.idempotency {
        check_ledger_folder(&settings.ledger, &settings.out)?;
    }
    std::fs::create_dir_all(&settings.out).map_err(RunError::io(format!(
        "the output folder {} cannot be created",
        settings.out.display()
    )))?;
    let probe = settings.out.join(".write-test");
    std::fs::write(&probe, b"").map_err(RunError::io(format!(
        "the output folder {} is not writable",
        settings.out.display()
    )))?;
    let _ = std::fs::remove_file(&probe);

    let ledger = if settings.idempotency {
        let cfg = LedgerConfig {
            lease_ttl: Duration::from_secs(settings.lease_ttl_secs),
            connect_timeout: settings.ledger_connect_timeout,
            ..LedgerConfig::new(settings.ledger.clone())
        };
        Some(Ledger::connect(cfg).await.map_err(RunError::ledger(&settings.ledger))?)
    } else {
        None
    };

    let manifest = ManifestWriter::open(&settings.out).map_err(RunError::failed)?;
    let manifest = Arc::new(Mutex::new(manifest));
    // attempts.csv keeps every run's attempts, as the manifest does (each row has its run id)
    let csv_path = settings.out.join("attempts.csv");
    let csv = CsvSink::append(&csv_path).map_err(RunError::io(format!("cannot open {}", csv_path.display())))?;
    let records = RecordWriter::spawn(
        (ManifestSink::new(manifest.clone(), settings.run_id.clone()), csv),
        4096,
    );

    let stack = Stack::new(&StackConfig {
        http: settings.http.clone(),
        contextual_retry: settings.contextual_retry,
        provider_learning: settings.provider_learning,
        learning_path: settings
            .provider_learning
            .then(|| settings.provider_learning_path.clone()),
        rate_limit: rate_config(&settings),
        idempotency: settings.idempotency,
        records: Some(records.clone()),
        run_id: Some(settings.run_id.clone()),
        ..StackConfig::default()
    })
    .map_err(RunError::Settings)?;
    let persist = stack.learner().map(|l| l.spawn_persist_task(Duration::from_secs(30)));

    let resolvers = ResolverConfig {
        mailto: settings.mailto.clone(),
        base_urls: settings.resolver_bases.clone(),
        ignore_robots: settings.ignore_robots,
        api_keys: settings.api_keys.clone(),
        ..ResolverConfig::default()
    };
    for note in &settings.notes {
        tracing::warn!("{note}");
    }
    for note in &settings.info {
        tracing::info!("{note}");
    }
    if settings.ignore_robots {
        tracing::warn!("--ignore-robots: landing pages are fetched whatever their site's robots.txt says");
    }
    let input_progress = input.as_ref().map(Input::progress);
    let works = open_source(&settings, input, &stack, &resolvers).map_err(RunError::Usage)?;
    let pipeline = Pipeline::new(
        PipelineConfig {
            out_dir: settings.out.clone(),
            run_id: settings.run_id.clone(),
            worker_id: worker_id(),
            workers: settings.workers,
            fallback: settings.fallback.clone(),
            resolvers,
            download: DownloadOptions {
                max_bytes: settings.max_bytes,
                durability: settings.durability,
            },
            lease_ttl: Duration::from_secs(settings.lease_ttl_secs),
            second_pass_max_wait: settings.second_pass_max_wait,
            verify_existing: settings.verify_existing,
            filter: settings.filter.clone(),
            output,
        },
        &stack,
        ledger.clone(),
        manifest.clone(),
    )?
    .with_records(records.clone());

    match &settings.store {
        Some(store) => tracing::info!(
            run_id = %settings.run_id,
            out = %redact_url(store),
            state = %settings.out.display(),
            "run started"
        ),
        None => tracing::info!(run_id = %settings.run_id, out = %settings.out.display(), "run started"),
    }
    let reporter = Reporter::new(settings.quiet, input_progress);
    let result = pipeline.run(works, |p| reporter.update(p), shutdown).await;
    reporter.finish();

    // whatever happened: records flushed, learning saved, ledger closed
    let _ = records.close().await;
    if let Some(task) = persist {
        if let Err(e) = task.shutdown().await {
            tracing::warn!("could not save the learned provider state: {e}");
        }
    }
    if let Some(ledger) = &ledger {
        ledger.close().await;
    }
    let summary = result?;
    print_summary(&summary, stack.learner());
    print_rates(stack.limiter(), &settings.rates);
    if summary.interrupted {
        eprintln!(
            "interrupted: the run stopped cleanly and can be resumed with the same command (finished works are kept)"
        );
        return Ok(Exit::Interrupted);
    }
    Ok(completed(&summary))
}

/// Where the run's finished PDFs go: the output folder, or the `--out` object store (its URL
/// checked, its client built from the environment; no request yet).
fn output(settings: &RunSettings) -> Result<Output, RunError> {
    let Some(url) = &settings.store else {
        return Ok(Output::Folder);
    };
    #[cfg(feature = "s3")]
    {
        crate::store::Store::from_url(url)
            .map(Output::Store)
            .map_err(|e| RunError::Usage(format!("--out {}: {e}", redact_url(url))))
    }
    #[cfg(not(feature = "s3"))]
    Err(RunError::Usage(format!(
        "--out {}: this build has no object-store output (build with --features s3)",
        redact_url(url)
    )))
}

/// How a run that finished ended: [`Exit::RetryLater`] when some works may succeed in a
/// later run, [`Exit::Completed`] otherwise.
pub fn completed(summary: &SummaryRecord) -> Exit {
    if summary.retry_later > 0 {
        Exit::RetryLater
    } else {
        Exit::Completed
    }
}

/// A SQLite ledger's folder must exist already, unless it is the output folder (which the
/// run creates): checked before anything is created, so a mistyped path makes nothing.
fn check_ledger_folder(url: &str, out: &Path) -> Result<(), RunError> {
    let usage = |e: LedgerError| RunError::Usage(format!("--ledger {}: {e}", redact_url(url)));
    let Some(file) = LedgerConfig::new(url).sqlite_path().map_err(usage)? else {
        return Ok(());
    };
    match file.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) if folder != out && !folder.is_dir() => Err(RunError::Usage(format!(
            "--ledger {}: the ledger's folder {} does not exist; create it or choose another path",
            redact_url(url),
            folder.display()
        ))),
        _ => Ok(()),
    }
}

type WorkStream = BoxStream<'static, Result<Work, LineError>>;

fn open_source(
    settings: &RunSettings,
    input: Option<Input>,
    stack: &Stack,
    resolvers: &ResolverConfig,
) -> Result<WorkStream, String> {
    Ok(match (&settings.source, input) {
        (Source::Dois(_), Some(input)) => stream::iter(input.dois()).boxed(),
        (_, Some(input)) => stream::iter(input.works()).boxed(),
        (Source::Works(path) | Source::Dois(path), None) => {
            return Err(format!("the input {} was not opened", path.display()))
        }
        (
            Source::Topic {
                text,
                year_start,
                year_end,
                max,
            },
            _,
        ) => topic_stream(
            stack.service(OperationType::ManifestFetch),
            stack.learner().cloned(),
            resolvers.base_url("openalex", "https://api.openalex.org"),
            text.clone(),
            (*year_start, *year_end),
            max.unwrap_or(u64::MAX),
            // the contact address, and the key as OpenAlex documents it: `api_key=`
            // (redacted in every log and file like any `api_key` parameter)
            [
                resolvers.mailto.clone().map(|m| ("mailto", m)),
                resolvers.api_keys.get("openalex").map(|k| ("api_key", k.to_owned())),
            ]
            .into_iter()
            .flatten()
            .collect(),
            stack.client().metadata_limit(),
        ),
    })
}

/// An OpenAlex search paged with a cursor (on the ManifestFetch stack).
#[allow(clippy::too_many_arguments)]
fn topic_stream(
    http: HttpService,
    learner: Option<Learner>,
    base: String,
    text: String,
    years: (Option<i32>, Option<i32>),
    max: u64,
    identity: Vec<(&'static str, String)>,
    limit: usize,
) -> WorkStream {
    struct Page {
        cursor: Option<String>,
        left: u64,
        line: usize,
    }
    let start = Page {
        cursor: Some("*".into()),
        left: max,
        line: 0,
    };
    stream::unfold(start, move |mut page| {
        let (http, base, text, identity) = (http.clone(), base.clone(), text.clone(), identity.clone());
        let learner = learner.clone();
        async move {
            let cursor = page.cursor.take()?;
            if page.left == 0 {
                return None;
            }
            page.line += 1;
            let mut pairs = vec![
                ("search", text.clone()),
                ("per-page", "200".to_owned()),
                ("cursor", cursor),
            ];
            match years {
                (Some(a), Some(b)) => pairs.push(("filter", format!("publication_year:{a}-{b}"))),
                (Some(a), None) => pairs.push(("filter", format!("publication_year:>{}", a - 1))),
                (None, Some(b)) => pairs.push(("filter", format!("publication_year:<{}", b + 1))),
                (None, None) => {}
            }
            pairs.extend(identity);
            let fetched: Result<(Vec<Work>, Option<String>), String> = async {
                let mut url = url::Url::parse(&format!("{base}/works")).map_err(|e| e.to_string())?;
                url.query_pairs_mut()
                    .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())));
                let req = http::Request::get(url.as_str())
                    .extension(Provider::new("openalex"))
                    .body(Full::<Bytes>::default())
                    .map_err(|e| e.to_string())?;
                // a spent allowance (OpenAlex's credits) says so, and when it resets
                let key = crate::context::PartitionKey::new("openalex", crate::context::host_of(req.uri()));
                let spent = || {
                    let pause = learner.as_ref()?.quota_pause(&key)?;
                    Some(format!(
                        "OpenAlex's allowance is spent; it resets in {}: the search stops here, \
                         run the same command again after the reset",
                        crate::layers::learning::in_words(
                            pause.until.saturating_duration_since(tokio::time::Instant::now())
                        )
                    ))
                };
                let res = match http.oneshot(req).await {
                    Ok(res) => res,
                    Err(e) => return Err(spent().unwrap_or_else(|| e.to_string())),
                };
                if !res.status().is_success() {
                    return Err(spent().unwrap_or_else(|| format!("OpenAlex answered {}", res.status())));
                }
                let body = crate::resolvers::read_pipeline_body(res, limit)
                    .await
                    .map_err(|e| e.to_string())?;
                let json: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let next = json["meta"]["next_cursor"].as_str().map(str::to_owned);
                let works = json["results"]
                    .as_array()
                    .map(|rs| rs.iter().filter_map(|r| Work::from_openalex(r).ok()).collect())
                    .unwrap_or_default();
                Ok((works, next))
            }
            .await;
            let items: Vec<Result<Work, LineError>> = match fetched {
                Ok((works, next)) => {
                    page.cursor = next.filter(|_| !works.is_empty());
                    let take = usize::try_from(page.left).unwrap_or(usize::MAX).min(works.len());
                    page.left -= take as u64;
                    works.into_iter().take(take).map(Ok).collect()
                }
                Err(message) => vec![Err(LineError {
                    line: page.line,
                    message: format!("OpenAlex search page {}: {message}", page.line),
                })],
            };
            Some((stream::iter(items), page))
        }
    })
    .flatten()
    .boxed()
}

/// Progress: a bar on a terminal, a line every 10 s otherwise, nothing with `--quiet`.
struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
    last_line: Mutex<std::time::Instant>,
    /// How much of the input files was read: the share done and the ETA, once known.
    input: Option<InputProgress>,
    started: std::time::Instant,
}

impl Reporter {
    fn new(quiet: bool, input: Option<InputProgress>) -> Reporter {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg} ({per_sec})")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar.set_message("starting");
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Reporter {
            bar,
            quiet,
            last_line: Mutex::new(std::time::Instant::now()),
            input,
            started: std::time::Instant::now(),
        }
    }

    /// `, input 42% read, ETA 3m10s` once a share of a sized input is read.
    fn eta(&self) -> String {
        let Some(f) = self
            .input
            .as_ref()
            .and_then(InputProgress::fraction)
            .filter(|f| *f > 0.0)
        else {
            return String::new();
        };
        // all read: what is left is the works in flight, which the bytes cannot time
        if f >= 1.0 {
            return ", input read".into();
        }
        let left = self.started.elapsed().as_secs_f64() * (1.0 - f) / f;
        let (m, s) = ((left / 60.0) as u64, (left % 60.0) as u64);
        format!(", input {:.0}% read, ETA {m}m{s:02}s", f * 100.0)
    }

    fn update(&self, p: &Progress) {
        let msg = format!(
            "{} done: {} downloaded, {} skipped, {} failed, {} deferred, {:.1} MiB{}",
            p.done,
            p.downloaded,
            p.skipped,
            p.failed,
            p.deferred,
            p.bytes as f64 / 1048576.0,
            self.eta()
        );
        if let Some(bar) = &self.bar {
            bar.set_position(p.done);
            bar.set_message(msg);
        } else if !self.quiet {
            let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
            if last.elapsed() >= Duration::from_secs(10) {
                *last = std::time::Instant::now();
                eprintln!("progress: {msg}");
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_summary(s: &SummaryRecord, learner: Option<&Learner>) {
    println!("downloaded  {:>8}", s.downloaded);
    println!("skipped     {:>8}", s.skipped);
    println!("failed      {:>8}", s.failed);
    for (reason, n) in &s.failed_by_reason {
        println!("  {reason:<22}{n:>6}");
    }
    println!("deferred    {:>8}", s.deferred);
    for (reason, n) in &s.deferred_by_reason {
        println!("  {reason:<22}{n:>6}");
    }
    if let Some(n) = s.deferred_by_reason.get(&ReasonCode::QuotaSpent) {
        let pauses = learner.map(quota_resets).unwrap_or_default();
        println!("{}", quota_line(*n, &pauses, std::time::SystemTime::now()));
    }
    println!("bad input   {:>8}", s.input_errors);
    if !s.filtered.is_empty() {
        println!(
            "filtered    {:>8}  (left out before any request)",
            s.filtered.values().sum::<u64>()
        );
        for (why, n) in &s.filtered {
            println!("  {:<22}{n:>6}", why.as_str());
        }
    }
    println!("bytes       {:>8}", s.bytes);
    println!("elapsed     {:>7.1}s", s.elapsed_ms as f64 / 1000.0);
    if !s.resolvers.is_empty() {
        println!("resolver       asked remembered   pdfs  (works asked about; answers taken from the ledger instead; PDFs found)");
        for (name, c) in &s.resolvers {
            println!("  {name:<16}{:>6}{:>10}{:>7}", c.asked, c.cached, c.pdfs);
        }
    }
    if s.retry_later > 0 {
        println!(
            "retry later {:>8}  (failed or deferred for a reason a later run may fix: network, 5xx, 429, disk; exit 3)",
            s.retry_later
        );
    }
    if let Some(learner) = learner {
        for status in learner.statuses() {
            println!("rate        {status}");
        }
    }
}

/// The providers whose allowance is spent now, each with when it resets.
fn quota_resets(learner: &Learner) -> Vec<(String, std::time::SystemTime)> {
    let mut out: Vec<(String, std::time::SystemTime)> = Vec::new();
    for (key, pause) in learner.quota_pauses() {
        let provider = key.provider().as_str();
        match out.iter_mut().find(|(p, _)| p == provider) {
            Some((_, at)) => *at = (*at).max(pause.resets_at),
            None => out.push((provider.to_owned(), pause.resets_at)),
        }
    }
    out
}

/// What the user is told of the works deferred because a provider's allowance is spent:
/// `12 deferred: unpaywall allowance spent, resets at 02:05 UTC (in 3 h); ...`.
fn quota_line(deferred: u64, resets: &[(String, std::time::SystemTime)], now: std::time::SystemTime) -> String {
    if resets.is_empty() {
        return format!(
            "{deferred} deferred: a provider's allowance spent (quota_spent); a run after its reset asks it again"
        );
    }
    let each: Vec<String> = resets
        .iter()
        .map(|(provider, at)| {
            let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let left = at.duration_since(now).unwrap_or_default();
            format!(
                "{provider} allowance spent, resets at {:02}:{:02} UTC (in {})",
                secs / 3600 % 24,
                secs / 60 % 60,
                crate::layers::learning::in_words(left)
            )
        })
        .collect();
    format!(
        "{deferred} deferred: {}; a run after the reset asks again",
        each.join("; ")
    )
}

/// `contentdownload report`: reads the folder's manifest (or `--manifest`) and writes
/// `report.html` (or `--output`) whole: to a temporary file in the same folder, then renamed,
/// so a reader never sees half a report.
pub fn report(args: &ReportArgs) -> Result<Exit, RunError> {
    let manifest = args.manifest.clone().unwrap_or_else(|| args.out.join(MANIFEST_FILE));
    if !manifest.is_file() {
        return Err(RunError::Usage(format!(
            "no manifest at {}: give the output folder of a run (--out) or --manifest FILE",
            manifest.display()
        )));
    }
    let report = Report::read(&manifest, args.run_id.as_deref()).map_err(|e| RunError::Failed(e.into()))?;
    if let (Some(run), 0, 0) = (&args.run_id, report.works(), report.attempts()) {
        return Err(RunError::Usage(format!(
            "the manifest {} has no line of run {run:?}",
            manifest.display()
        )));
    }
    let output = args.output.clone().unwrap_or_else(|| args.out.join(REPORT_FILE));
    let folder = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let io = |what: &str, source| RunError::Io {
        what: format!("{what} {}", output.display()),
        source,
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&folder).map_err(|e| io("cannot write the report", e))?;
    std::io::Write::write_all(&mut tmp, report.html().as_bytes()).map_err(|e| io("cannot write the report", e))?;
    tmp.persist(&output)
        .map_err(|e| io("cannot write the report", e.error))?;
    println!(
        "report: {} ({} works, {} attempts)",
        output.display(),
        report.works(),
        report.attempts()
    );
    Ok(Exit::Completed)
}

/// `contentdownload status`: the learned provider state and the ledger's counts.
pub async fn status(args: &StatusArgs) -> Result<Exit, RunError> {
    if !args.out.is_dir() {
        return Err(RunError::Usage(format!(
            "{} is not an output folder",
            args.out.display()
        )));
    }
    let learning_path = args
        .provider_learning_path
        .clone()
        .unwrap_or_else(|| args.out.join("provider_learning.json"));
    // A read command: it changes nothing in the folder. A bad learning file is reported
    // and left where it is (the next run moves it aside), the ledger is not reconciled, and
    // a missing SQLite ledger is not created.
    let limiter = RateLimiter::new(rate_table(
        &args.rates,
        args.default_rate.unwrap_or(RateLimitConfig::default().default),
    ))
    .map_err(|e| RunError::Settings(e.into()))?;
    let rates = rate_rows(&limiter, &args.rates);
    let default_rate = limiter.rate_keys().default_quota();
    let (statuses, resets, learning_problem) =
        match Learner::inspect(limiter, LearningPolicy::default(), &learning_path) {
            Ok(learner) => (learner.statuses(), quota_resets(&learner), None),
            Err(InspectError::File(e)) => {
                eprintln!("warning: {e}; left in place (the next run moves it aside and starts fresh)");
                (Vec::new(), Vec::new(), Some(e.to_string()))
            }
            Err(e) => return Err(RunError::failed(e)),
        };
    let ledger_url = args
        .ledger
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", args.out.join("ledger.sqlite").display()));
    let ledger_config = LedgerConfig {
        reconcile_on_open: false,
        migrate: false,
        ..LedgerConfig::new(ledger_url.clone())
    };
    let sqlite_file = ledger_config
        .sqlite_path()
        .map_err(|e| RunError::Usage(format!("--ledger {}: {e}", redact_url(&ledger_url))))?;
    let exists = sqlite_file.as_deref().is_none_or(Path::is_file);
    if args.ledger.is_some() && !exists {
        return Err(RunError::Usage(format!("no ledger at {}", redact_url(&ledger_url))));
    }
    let counts = if exists {
        let ledger = Ledger::connect(ledger_config)
            .await
            .map_err(RunError::ledger(&ledger_url))?;
        let counts = ledger.counts(None).await.map_err(RunError::failed)?;
        // The ledger is read as it is: one from before the resolver answers (schema 2) has none.
        let answers = if ledger.schema_version().await.map_err(RunError::failed)? >= 2 {
            ledger.resolver_totals().await.map_err(RunError::failed)?
        } else {
            Vec::new()
        };
        let deferred = ledger
            .reasons(crate::ledger::JobState::Deferred)
            .await
            .map_err(RunError::failed)?;
        ledger.close().await;
        Some((counts, answers, deferred))
    } else {
        None
    };
    let (counts, answers, deferred) = counts.map_or((None, Vec::new(), Vec::new()), |(c, a, d)| (Some(c), a, d));
    let quota_spent = deferred
        .iter()
        .find(|(r, _)| r.as_deref() == Some(ReasonCode::QuotaSpent.as_str()))
        .map_or(0, |(_, n)| *n);
    if args.json {
        let providers: Vec<serde_json::Value> = statuses
            .iter()
            .map(|s| {
                serde_json::json!({
                    "provider": s.partition.provider().as_str(),
                    "host": s.partition.host(),
                    "status": s.phase.to_string(),
                    "rate": s.rate,
                    "ceiling": s.ceiling,
                    "reduction": s.applied_reduction,
                    "consecutive_429": s.consecutive_429,
                    "throttles": s.throttles,
                    "recovery_estimate_s": s.recovery_times.last().map(Duration::as_secs_f64),
                })
            })
            .collect();
        let ledger = counts.map(|c| {
            serde_json::json!({
                "planned": c.planned, "leased": c.leased, "finalized": c.finalized,
                "failed": c.failed, "deferred": c.deferred, "skipped": c.skipped,
            })
        });
        let keys: Vec<serde_json::Value> = rates
            .iter()
            .map(|(usage, source)| {
                serde_json::json!({
                    "key": usage.key, "rate": usage.quota.rate, "burst": usage.quota.burst, "source": source,
                })
            })
            .collect();
        let rates = serde_json::json!({
            "default": { "rate": default_rate.rate, "burst": default_rate.burst },
            "keys": keys,
        });
        let resolvers: Vec<serde_json::Value> = answers
            .iter()
            .map(|t| {
                serde_json::json!({
                    "resolver": t.resolver, "works": t.works, "with_candidates": t.with_candidates, "pdfs": t.pdfs,
                })
            })
            .collect();
        let deferred_by_reason: serde_json::Map<String, serde_json::Value> = deferred
            .iter()
            .map(|(r, n)| (r.clone().unwrap_or_else(|| "none".into()), (*n).into()))
            .collect();
        let quota: Vec<serde_json::Value> = resets
            .iter()
            .map(|(provider, at)| {
                let unix = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                serde_json::json!({ "provider": provider, "resets_at_unix": unix })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "providers": providers, "providers_error": learning_problem, "ledger": ledger, "rates": rates,
                "resolvers": resolvers, "deferred_by_reason": deferred_by_reason, "quota_spent": quota,
            })
        );
    } else {
        if let Some(problem) = &learning_problem {
            println!("providers: {problem}");
        } else if statuses.is_empty() {
            println!("providers: nothing learned yet");
        }
        for s in &statuses {
            println!("{s}");
        }
        let default = show_quota(default_rate);
        println!("default rate: {default} (hosts no key names; run --default-rate)");
        for (usage, source) in &rates {
            let key = usage.key.as_deref().unwrap_or_default();
            println!("rate key: {key} = {} ({source})", show_quota(usage.quota));
        }
        match counts {
            Some(c) => println!(
                "ledger: {} planned, {} leased, {} finalized, {} failed, {} deferred, {} skipped",
                c.planned, c.leased, c.finalized, c.failed, c.deferred, c.skipped
            ),
            None => println!("ledger: none in this folder"),
        }
        for (reason, n) in &deferred {
            println!("deferred: {n} {}", reason.as_deref().unwrap_or("(no reason)"));
        }
        if quota_spent > 0 {
            println!("{}", quota_line(quota_spent, &resets, std::time::SystemTime::now()));
        } else {
            for (provider, at) in &resets {
                let left = at.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                println!(
                    "{provider}: allowance spent, resets in {}",
                    crate::layers::learning::in_words(left)
                );
            }
        }
        for t in &answers {
            println!(
                "resolver: {}: {} works answered ({} with candidates), {} PDFs found",
                t.resolver, t.works, t.with_candidates, t.pdfs
            );
        }
    }
    Ok(Exit::Completed)
}

/// `contentdownload fetch`: one URL through the shared client, streamed to a file.
pub async fn fetch(args: &FetchArgs) -> Result<Exit, RunError> {
    let uri: http::Uri = args.url.parse().map_err(|e| {
        let shown = crate::layers::telemetry::redacted(&args.url).to_string();
        RunError::Usage(format!("invalid URL {shown:?}: {e}"))
    })?;
    let client = HttpClient::new(&HttpConfig {
        mailto: args.mailto.clone(),
        ..HttpConfig::default()
    })
    .map_err(|e| RunError::Settings(e.into()))?;
    let req = http::Request::get(uri)
        .body(Full::<Bytes>::default())
        .map_err(RunError::failed)?;
    let response = client.oneshot(req).await.map_err(RunError::Failed)?;
    if !response.status().is_success() {
        return Err(RunError::failed(format!("the server answered {}", response.status())));
    }
    // Stream to a temporary name, then rename: a failed download leaves no half file.
    let partial = args.output.with_extension("part");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(RunError::io(format!("cannot write {}", partial.display())))?;
    let mut body = response.into_body();
    let mut bytes = 0u64;
    let copied: Result<(), BoxError> = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                file.write_all(&data).await?;
                bytes += data.len() as u64;
            }
        }
        file.sync_all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(RunError::Failed(e));
    }
    tokio::fs::rename(&partial, &args.output)
        .await
        .map_err(RunError::failed)?;
    eprintln!("wrote {bytes} bytes to {}", args.output.display());
    Ok(Exit::Completed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_shows_the_share_read_and_an_eta_once_the_input_is_sized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.jsonl");
        let line = "{\"id\": \"W1\"}\n";
        std::fs::write(&path, line.repeat(4)).unwrap();
        let input = Input::open(&path).unwrap();
        let reporter = Reporter::new(true, Some(input.progress()));
        assert_eq!(reporter.eta(), "", "nothing read yet: no ETA");
        assert_eq!(input.works().count(), 4);
        assert_eq!(reporter.eta(), ", input read", "all read: no ETA from bytes");
        assert_eq!(Reporter::new(true, None).eta(), "", "standard input has no size");
    }

    /// Each failure's exit status, decided by `RunError::exit` alone, and the ledger's
    /// message: its own when it names the ledger, else prefixed with the redacted URL.
    #[test]
    fn the_quota_line_names_each_provider_and_its_reset() {
        use std::time::{Duration, UNIX_EPOCH};
        // 2026-11-27 23:10 UTC, resets at 02:10 the next day and at 23:55
        let now = UNIX_EPOCH + Duration::from_secs(1_795_907_400);
        let resets = [
            ("unpaywall".to_owned(), now + Duration::from_secs(3 * 3600)),
            ("openalex".to_owned(), now + Duration::from_secs(45 * 60)),
        ];
        assert_eq!(
            quota_line(12, &resets[..1], now),
            "12 deferred: unpaywall allowance spent, resets at 02:10 UTC (in 3 h); a run after the reset asks again"
        );
        assert_eq!(
            quota_line(2, &resets, now),
            "2 deferred: unpaywall allowance spent, resets at 02:10 UTC (in 3 h); \
             openalex allowance spent, resets at 23:55 UTC (in 45 min); a run after the reset asks again"
        );
        assert!(quota_line(1, &[], now).starts_with("1 deferred: a provider's allowance spent"));
    }

    #[test]
    fn run_errors_map_to_exit_codes() {
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let unreachable = || LedgerError::Unreachable {
            url: "postgres://me:REDACTED@db/x".into(),
            timeout: Duration::from_secs(1),
            cause: "refused".into(),
        };
        let cases: Vec<(RunError, Exit)> = vec![
            (RunError::Usage("no input".into()), Exit::Usage),
            (RunError::Settings("bad rate".into()), Exit::Usage),
            (PipelineError::from(ConfigError::NoWorkers).into(), Exit::Usage),
            (
                RunError::ledger("postgres://me:s3cret@db/x")(unreachable()),
                Exit::Fatal,
            ),
            (
                RunError::io("the output folder o is not writable".into())(io()),
                Exit::Fatal,
            ),
            (PipelineError::Manifest(io()).into(), Exit::Fatal),
            (RunError::failed("the server answered 404 Not Found"), Exit::Fatal),
            // a full disk (ENOSPC, a quota) anywhere down the chain: run again once there is room
            (
                PipelineError::Manifest(std::io::Error::from_raw_os_error(28)).into(),
                Exit::RetryLater,
            ),
            (
                RunError::io("cannot write o/x.pdf".into())(std::io::ErrorKind::QuotaExceeded.into()),
                Exit::RetryLater,
            ),
            (
                RunError::failed(Box::new(RunError::io("saving".into())(
                    std::io::ErrorKind::StorageFull.into(),
                ))),
                Exit::RetryLater,
            ),
        ];
        for (e, exit) in cases {
            assert_eq!(e.exit(), exit, "{e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        let own = RunError::ledger("postgres://me:s3cret@db/x")(unreachable()).to_string();
        assert!(
            own.starts_with("cannot reach the PostgreSQL ledger at postgres://me:REDACTED@db/x"),
            "{own}"
        );
        let prefixed =
            RunError::ledger("sqlite://o/l.sqlite")(LedgerError::NotFound(crate::ledger::JobId(7))).to_string();
        assert!(
            prefixed.starts_with("the ledger sqlite://o/l.sqlite cannot be used: "),
            "{prefixed}"
        );
        assert_eq!(
            RunError::from(PipelineError::from(ConfigError::NoWorkers)).to_string(),
            "workers must be at least 1"
        );
    }

    #[test]
    fn ledger_passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://me:s3cret@db:5432/x"),
            "postgres://me:REDACTED@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://pdfs/ledger.sqlite"), "sqlite://pdfs/ledger.sqlite");
    }
}
