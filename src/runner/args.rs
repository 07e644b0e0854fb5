//! The command line (clap), with a `DOCSTOKG_*` environment variable for every setting.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::download::Durability;
use crate::layers::rate_limit::{Quota, MIN_RATE};
use crate::pipeline::{FallbackConfig, TierConfig};

/// `contentdownload`: polite, resilient downloads of open-access PDFs for scholarly works.
#[derive(Debug, Parser)]
#[command(name = "contentdownload", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Resolve and download PDFs for a list of works.
    #[command(after_help = RUN_EXIT_CODES)]
    Run(Box<RunArgs>),
    /// Show the learned provider state and the ledger's counts for an output folder.
    Status(StatusArgs),
    /// Download one URL through the shared client and stream it to a file.
    Fetch(FetchArgs),
    /// Write `report.html` from an output folder's manifest: rates and 429s per provider
    /// over time, downloads per second, outcomes by reason, resolver and host, the slowest
    /// and most failing hosts (inline SVG, no script, nothing fetched).
    Report(ReportArgs),
}

/// The exit codes of `run`, shown under its `--help`.
pub const RUN_EXIT_CODES: &str = "\
Exit codes:
  0    every work was downloaded, skipped (already there) or is definitely unavailable
       (404/410, not a PDF, no candidate URL)
  1    fatal error (output folder not writable, ledger unreachable)
  2    usage error
  3    some works failed or were deferred for a reason a later run may fix (connect error,
       timeout, 5xx, 429 or a provider's wait, a write error such as a full disk):
       run the same command again later
  130  interrupted (Ctrl-C); the same command resumes";

/// Log line format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object a line.
    Json,
}

/// A `--rate KEY=RATE[:BURST]` value.
#[derive(Clone, Debug, PartialEq)]
pub struct RateSpec {
    /// A rate key: a provider name (`crossref`), a host on any port (`127.0.0.1`), or
    /// `host:port` (`127.0.0.1:8080`).
    pub key: String,
    /// Requests per second.
    pub rate: f64,
    /// Burst (bucket capacity); defaults to 1.
    pub burst: Option<u32>,
}

impl RateSpec {
    /// The quota: `rate`, and `burst` or 1.
    pub fn quota(&self) -> Quota {
        Quota::new(self.rate, self.burst.unwrap_or(1))
    }
}

impl std::fmt::Display for RateSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.rate)?;
        match self.burst {
            Some(b) => write!(f, ":{b}"),
            None => Ok(()),
        }
    }
}

/// Parses `KEY=RATE[:BURST]`.
pub fn parse_rate(s: &str) -> Result<RateSpec, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=RATE[:BURST], got {s:?}"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!("empty KEY in {s:?}"));
    }
    if key.contains('/') || key.contains('@') || key.contains(char::is_whitespace) {
        return Err(format!(
            "KEY in {s:?} is a provider name (crossref), a host (example.org, any port) or \
             host:port (127.0.0.1:8080), not a URL"
        ));
    }
    let (rate, burst) = parse_rate_value(value, s)?;
    Ok(RateSpec {
        key: key.to_owned(),
        rate,
        burst,
    })
}

/// Parses `RATE[:BURST]`; `whole` is the argument, for the messages.
fn parse_rate_value(value: &str, whole: &str) -> Result<(f64, Option<u32>), String> {
    let s = whole;
    let (rate, burst) = match value.split_once(':') {
        Some((r, b)) => (
            r,
            Some(
                b.trim()
                    .parse::<u32>()
                    .map_err(|_| format!("BURST in {s:?} is not a whole number"))?,
            ),
        ),
        None => (value, None),
    };
    let rate: f64 = rate
        .trim()
        .parse()
        .map_err(|_| format!("RATE in {s:?} is not a number"))?;
    if !(rate.is_finite() && rate >= MIN_RATE) {
        return Err(format!(
            "RATE in {s:?} must be a positive number of requests per second (at least {MIN_RATE})"
        ));
    }
    if burst == Some(0) {
        return Err(format!("BURST in {s:?} must be at least 1"));
    }
    Ok((rate, burst))
}

/// Parses `--default-rate RATE[:BURST]` (BURST defaults to 1, as for `--rate`).
pub fn parse_default_rate(s: &str) -> Result<Quota, String> {
    let (rate, burst) = parse_rate_value(s, s)?;
    Ok(Quota::new(rate, burst.unwrap_or(1)))
}

/// Parses a duration: a whole number with an optional unit, `ms`, `s` (the default), `m`,
/// `h` or `d` (`90`, `90s`, `1500ms`, `2m`, `30d`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    use std::time::Duration;
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, "s"),
    };
    let n: u64 = number.parse().map_err(|_| {
        format!("{s:?} is not a duration; write a whole number with ms, s, m, h or d (90s, 1500ms, 2m, 30d)")
    })?;
    let times = |secs: u64| {
        n.checked_mul(secs)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("{s:?} is too long"))
    };
    match unit.trim() {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => times(60),
        "h" => times(3600),
        "d" => times(86_400),
        other => Err(format!("unknown unit {other:?} in {s:?}; use ms, s, m, h or d")),
    }
}

/// Parses `--durability`: `file`, `batch` or `none`.
pub fn parse_durability(s: &str) -> Result<Durability, String> {
    s.parse()
}

/// Parses a size in bytes: a whole number with an optional 1024-based unit, `K`, `M`, `G`
/// or `T` (`KiB`, `MB` and the like read the same) — `1048576`, `500M`, `4G`.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (number, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => t.split_at(i),
        None => (t, ""),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size; write a whole number of bytes, or with K, M, G (500M, 4G)"))?;
    let unit = unit.trim().to_ascii_uppercase();
    let shift = match unit.trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}; use K, M, G or T (1024-based)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_tier(s: &str) -> Result<TierConfig, String> {
    FallbackConfig::parse_tier(s).map_err(|e| e.reason)
}

fn parse_resolver_base(s: &str) -> Result<(String, String), String> {
    let (name, url) = s
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=URL, got {s:?}"))?;
    let (name, url) = (name.trim(), url.trim());
    if !crate::resolvers::RESOLVER_NAMES.contains(&name) {
        return Err(format!(
            "unknown resolver {name:?}; known: {}",
            crate::resolvers::RESOLVER_NAMES.join(", ")
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    Ok((name.to_owned(), url.to_owned()))
}

/// A secret given on the command line, in the environment or in the TOML file (an API key):
/// `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(crate::layers::telemetry::REDACTED)
    }
}

/// A `--api-key PROVIDER=KEY` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeySpec {
    /// The provider (`core`).
    pub provider: String,
    /// The key.
    pub key: Secret,
}

/// Parses `--api-key PROVIDER=KEY`. Never fails here: clap would quote the whole value,
/// key included, in its error; the settings check it and name only the provider.
pub fn parse_api_key(s: &str) -> Result<ApiKeySpec, String> {
    let (provider, key) = s.split_once('=').unwrap_or(("", s));
    Ok(ApiKeySpec {
        provider: provider.trim().to_ascii_lowercase(),
        key: Secret::new(key.trim()),
    })
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s))
}

/// `contentdownload run`.
#[derive(Debug, Args, Default)]
pub struct RunArgs {
    /// OpenAlex works, one JSON record a line: a file, plain or gzipped; a folder (every
    /// `*.jsonl`, `*.jsonl.gz` and `*.gz` under it, in path order, such as the OpenAlex
    /// snapshot's `works` folder); or `-` for standard input.
    #[arg(long, value_name = "FILE|DIR", env = "DOCSTOKG_INPUT", group = "source")]
    pub input: Option<PathBuf>,
    /// DOIs, one a line (`#` comments): a file, plain or gzipped, a folder of them, or `-`.
    #[arg(long, value_name = "FILE|DIR", env = "DOCSTOKG_DOIS", group = "source")]
    pub dois: Option<PathBuf>,
    /// An OpenAlex search: fetch the works it finds (paged with a cursor).
    #[arg(long, value_name = "TEXT", env = "DOCSTOKG_TOPIC", group = "source")]
    pub topic: Option<String>,
    /// Leave out works published before this year: the OpenAlex search asks only for
    /// those; from --input and --dois, a work whose record gives an earlier year is skipped
    /// before any request (a work without a year is kept).
    #[arg(long, value_name = "YEAR", env = "DOCSTOKG_YEAR_START")]
    pub year_start: Option<i32>,
    /// Leave out works published after this year (as --year-start).
    #[arg(long, value_name = "YEAR", env = "DOCSTOKG_YEAR_END")]
    pub year_end: Option<i32>,
    /// Skip, before any request, works whose OpenAlex record knows no open-access copy
    /// (`open_access.is_oa: false`, or neither the flag nor any location); works known
    /// only by a DOI are kept. Most of the OpenAlex snapshot is closed: with this flag those
    /// works cost nothing, not even a ledger row.
    #[arg(long, env = "DOCSTOKG_ONLY_OA", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub only_oa: Option<bool>,
    /// Keep only works of these OpenAlex types (repeatable or comma-separated, any case:
    /// `article`, `preprint`, `book-chapter`, ...); a work whose record gives no type is kept.
    #[arg(long = "type", value_name = "TYPE", env = "DOCSTOKG_TYPE", value_delimiter = ',')]
    pub types: Vec<String>,
    /// With --topic: at most this many works.
    #[arg(long, value_name = "N", env = "DOCSTOKG_MAX")]
    pub max: Option<u64>,
    /// Output folder [default: ./pdfs], or an object store (build feature `s3`):
    /// `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL, AWS_ALLOW_HTTP) or
    /// `file:///DIR`. With a store, the ledger, manifest, attempts.csv and learned state live
    /// in the --state folder.
    #[arg(long, value_name = "DIR|URL", env = "DOCSTOKG_OUT")]
    pub out: Option<PathBuf>,
    /// With an object-store --out: the local state folder (ledger, manifest, attempts.csv,
    /// learned state, PDFs being checked) [default: ./contentdownload-state].
    #[arg(long, value_name = "DIR", env = "DOCSTOKG_STATE")]
    pub state: Option<PathBuf>,
    /// Contact address for the User-Agent and the APIs' polite pools.
    #[arg(long, value_name = "EMAIL", env = "DOCSTOKG_MAILTO")]
    pub mailto: Option<String>,
    /// Rate limit for a key (repeatable; `;` separates several in DOCSTOKG_RATE). KEY is a
    /// provider name (`crossref`), a host, which covers that host on any port (`127.0.0.1`,
    /// `[::1]`), or `host:port` (`127.0.0.1:8080`); case-insensitive. The most specific key
    /// wins: `host:port`, then provider name, then host. RATE is requests per second, BURST
    /// how many may go back to back after a pause (default 1). E.g. `--rate crossref=10:5
    /// --rate 127.0.0.1=1000:100 --rate localhost:8080=50`. A key that matched no request
    /// is a warning in the summary.
    #[arg(long = "rate", value_name = "KEY=RATE[:BURST]", value_parser = parse_rate, env = "DOCSTOKG_RATE", value_delimiter = ';')]
    pub rates: Vec<RateSpec>,
    /// Rate limit of a host that no `--rate` key and no built-in provider rate names
    /// (`status` lists them): requests per second, and a burst (default 1) [default: 5:5].
    #[arg(long, value_name = "RATE[:BURST]", value_parser = parse_default_rate, env = "DOCSTOKG_DEFAULT_RATE")]
    pub default_rate: Option<Quota>,
    /// Works processed at once [default: 8].
    #[arg(long, value_name = "N", env = "DOCSTOKG_WORKERS")]
    pub workers: Option<usize>,
    /// Requests in flight to one host (`host[:port]`) at once; a request over the cap waits
    /// without holding a global slot [default: 4].
    #[arg(long, value_name = "N", env = "DOCSTOKG_MAX_PER_HOST")]
    pub max_per_host: Option<usize>,

    /// Retry by operation type (on by default).
    #[arg(long, env = "DOCSTOKG_ENABLE_CONTEXTUAL_RETRY", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), overrides_with = "disable_contextual_retry")]
    pub enable_contextual_retry: Option<bool>,
    /// Use the same standard retry for every operation.
    #[arg(long, action = ArgAction::SetTrue, overrides_with = "enable_contextual_retry")]
    pub disable_contextual_retry: bool,
    /// Learn each provider's rate from its 429s (on by default).
    #[arg(long, env = "DOCSTOKG_ENABLE_PROVIDER_LEARNING", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), overrides_with = "disable_provider_learning")]
    pub enable_provider_learning: Option<bool>,
    /// Keep the configured rates fixed.
    #[arg(long, action = ArgAction::SetTrue, overrides_with = "enable_provider_learning")]
    pub disable_provider_learning: bool,
    /// Where learned provider state persists (default: `<out>/provider_learning.json`).
    #[arg(long, value_name = "FILE", env = "DOCSTOKG_PROVIDER_LEARNING_PATH")]
    pub provider_learning_path: Option<PathBuf>,
    /// Idempotency keys and the job ledger (on by default).
    #[arg(long, env = "DOCSTOKG_ENABLE_IDEMPOTENCY", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(), overrides_with = "disable_idempotency")]
    pub enable_idempotency: Option<bool>,
    /// No ledger: nothing is remembered between runs but the files.
    #[arg(long, action = ArgAction::SetTrue, overrides_with = "enable_idempotency")]
    pub disable_idempotency: bool,
    /// The job ledger (default: `sqlite://<out>/ledger.sqlite`); `postgres://...` for many machines.
    #[arg(long, value_name = "URL", env = "DOCSTOKG_LEDGER")]
    pub ledger: Option<String>,
    /// How long to wait for a PostgreSQL ledger to answer before giving up with an error
    /// that names it [default: 10s].
    #[arg(long, value_name = "DURATION", env = "DOCSTOKG_LEDGER_CONNECT_TIMEOUT", value_parser = parse_duration)]
    pub ledger_connect_timeout: Option<std::time::Duration>,
    /// This run's id [default: generated].
    #[arg(long, value_name = "ID", env = "DOCSTOKG_RUN_ID")]
    pub run_id: Option<String>,
    /// Lease time of a work in the ledger, in seconds [default: 120].
    #[arg(long, value_name = "SECS", env = "DOCSTOKG_LEASE_TTL_SECS")]
    pub lease_ttl_secs: Option<u64>,
    /// The longest the second pass waits for the providers of deferred works to accept
    /// again (their Retry-After); works expected back later stay deferred for the next run.
    /// `0` does not wait [default: 60s].
    #[arg(long, value_name = "DURATION", env = "DOCSTOKG_SECOND_PASS_MAX_WAIT", value_parser = parse_duration)]
    pub second_pass_max_wait: Option<std::time::Duration>,
    /// How long each resolver's answer for a work (its candidate URLs, or nothing) is
    /// remembered in the ledger: a rerun or the second pass within this age asks no provider
    /// again for that work. Errors are never remembered. `0` turns it off [default: 30d].
    #[arg(long, value_name = "DURATION", env = "DOCSTOKG_RESOLVER_CACHE_TTL", value_parser = parse_duration)]
    pub resolver_cache_ttl: Option<std::time::Duration>,

    /// Time allowed for one work, all sources together [default: 120000].
    #[arg(long, value_name = "MS", env = "DOCSTOKG_FALLBACK_TOTAL_TIMEOUT_MS")]
    pub fallback_total_timeout_ms: Option<u64>,
    /// Candidate downloads allowed for one work [default: 20].
    #[arg(long, value_name = "N", env = "DOCSTOKG_FALLBACK_MAX_ATTEMPTS")]
    pub fallback_max_attempts: Option<u32>,
    /// Candidate downloads of one work at once [default: 3].
    #[arg(long, value_name = "N", env = "DOCSTOKG_FALLBACK_MAX_CONCURRENT")]
    pub fallback_max_concurrent: Option<usize>,
    /// A fallback tier (repeatable; replaces the default tiers): `NAME=r1,r2[:parallel=N]`
    /// or a default tier name (`direct_oa`, `repositories`, `doi`, `archive`) with an optional
    /// `:parallel=N`.
    #[arg(long = "fallback-tier", value_name = "TIER[:parallel=N]", value_parser = parse_tier)]
    pub fallback_tiers: Vec<TierConfig>,
    /// The largest PDF accepted: bytes, or with K, M, G (1024-based), e.g. `500M`; a larger
    /// payload fails as `too_large`. Payloads under 1 KiB (1024 bytes) fail as `too_small`
    /// [default: 4G].
    #[arg(long, value_name = "SIZE", env = "DOCSTOKG_MAX_BYTES", value_parser = parse_bytes)]
    pub max_bytes: Option<u64>,
    /// When downloaded PDFs are forced to disk, against a power loss (a crash of the
    /// runner alone never leaves a half file under a final name): `file` syncs each PDF
    /// before its ledger row says FINALIZED; `batch` syncs a group of PDFs at once (one
    /// `syncfs` on Linux, or an `fsync` each for a group of up to 16) before the group's
    /// ledger rows say FINALIZED, so FINALIZED still
    /// means on disk, for a fraction of the cost; `none` never syncs, for throwaway corpora
    /// (after a power loss, works recorded as downloaded may have lost their files; a rerun
    /// downloads those whose file is missing or short) [default: batch].
    #[arg(long, value_name = "file|batch|none", env = "DOCSTOKG_DURABILITY", value_parser = parse_durability)]
    pub durability: Option<Durability>,
    /// Re-hash (SHA-256) the file of every work the ledger records as downloaded, and
    /// download it again when it differs (reads every file in full). Without it, a
    /// recorded file that is missing or has another size is downloaded again. With an
    /// object-store --out the ledger is trusted, and this checks each object's size instead
    /// (one HEAD request per work).
    #[arg(long, env = "DOCSTOKG_VERIFY_EXISTING", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub verify_existing: Option<bool>,
    /// Never use the Wayback Machine.
    #[arg(long, action = ArgAction::SetTrue, env = "DOCSTOKG_DISABLE_WAYBACK_FALLBACK")]
    pub disable_wayback_fallback: bool,
    /// Fetch landing pages even where the site's robots.txt disallows them (by default the
    /// landing resolver honours robots.txt, `Disallow` and `Crawl-delay`, for the
    /// `contentdownload` token; PDF URLs from APIs are never gated).
    #[arg(long, env = "DOCSTOKG_IGNORE_ROBOTS", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub ignore_robots: Option<bool>,
    /// Point a resolver at another base URL (repeatable), e.g. `unpaywall=http://127.0.0.1:8080`.
    #[arg(long = "resolver-base", value_name = "NAME=URL", value_parser = parse_resolver_base)]
    pub resolver_bases: Vec<(String, String)>,
    /// A provider's API key (repeatable): `openalex` (sent as `api_key=`), `core` (needed by
    /// the core resolver; `Authorization: Bearer`), `semantic_scholar` (`x-api-key`),
    /// `crossref` (Crossref Plus, `Crossref-Plus-API-Token`). Also from OPENALEX_API_KEY,
    /// CORE_API_KEY, S2_API_KEY, CROSSREF_PLUS_TOKEN, or the config file's `[api_keys]`
    /// (precedence: flag > environment > file). Keys are never logged nor written.
    #[arg(long = "api-key", value_name = "PROVIDER=KEY", value_parser = parse_api_key)]
    pub api_keys: Vec<ApiKeySpec>,
    /// OpenAlex's key from the environment (see `--api-key`).
    #[arg(long = "openalex-api-key", env = "OPENALEX_API_KEY", hide = true, hide_env_values = true,
          value_parser = parse_secret)]
    pub openalex_api_key: Option<Secret>,
    /// CORE's key from the environment (see `--api-key`).
    #[arg(long = "core-api-key", env = "CORE_API_KEY", hide = true, hide_env_values = true,
          value_parser = parse_secret)]
    pub core_api_key: Option<Secret>,
    /// Semantic Scholar's key from the environment (see `--api-key`).
    #[arg(long = "s2-api-key", env = "S2_API_KEY", hide = true, hide_env_values = true,
          value_parser = parse_secret)]
    pub s2_api_key: Option<Secret>,
    /// Crossref Plus's token from the environment (see `--api-key`).
    #[arg(long = "crossref-plus-token", env = "CROSSREF_PLUS_TOKEN", hide = true, hide_env_values = true,
          value_parser = parse_secret)]
    pub crossref_plus_token: Option<Secret>,

    /// A TOML file with the same settings (precedence: flags > environment > file > defaults).
    #[arg(long, value_name = "FILE", env = "DOCSTOKG_CONFIG")]
    pub config: Option<PathBuf>,
    /// No progress output.
    #[arg(long, short, action = ArgAction::SetTrue, env = "DOCSTOKG_QUIET")]
    pub quiet: bool,
    /// Log format.
    #[arg(long, value_enum, env = "DOCSTOKG_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// `contentdownload status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The output folder of a run; for a run whose --out was an object store, its --state
    /// folder (`--state` is another name for this flag).
    #[arg(
        long,
        visible_alias = "state",
        value_name = "DIR",
        env = "DOCSTOKG_OUT",
        default_value = "pdfs"
    )]
    pub out: PathBuf,
    /// The ledger, if not the default one in the folder.
    #[arg(long, value_name = "URL", env = "DOCSTOKG_LEDGER")]
    pub ledger: Option<String>,
    /// The learned provider state, if not the default file in the folder.
    #[arg(long, value_name = "FILE", env = "DOCSTOKG_PROVIDER_LEARNING_PATH")]
    pub provider_learning_path: Option<PathBuf>,
    /// A run's `--rate` keys, to show the rate table that run uses (as `run --rate`).
    #[arg(long = "rate", value_name = "KEY=RATE[:BURST]", value_parser = parse_rate, env = "DOCSTOKG_RATE", value_delimiter = ';')]
    pub rates: Vec<RateSpec>,
    /// A run's `--default-rate`, to show the rate table that run uses [default: 5:5].
    #[arg(long, value_name = "RATE[:BURST]", value_parser = parse_default_rate, env = "DOCSTOKG_DEFAULT_RATE")]
    pub default_rate: Option<Quota>,
    /// Print JSON.
    #[arg(long, action = ArgAction::SetTrue)]
    pub json: bool,
}

/// `contentdownload report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The output folder of a run (its `manifest.jsonl` is read, `report.html` written there);
    /// for a run whose --out was an object store, its --state folder (`--state` is another
    /// name for this flag).
    #[arg(
        long,
        visible_alias = "state",
        value_name = "DIR",
        env = "DOCSTOKG_OUT",
        default_value = "pdfs"
    )]
    pub out: PathBuf,
    /// Read this manifest instead of `<out>/manifest.jsonl`.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Only this run's lines (the manifest keeps every run of the folder).
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Write the report here instead of `<out>/report.html`.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `contentdownload fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The http(s) URL to fetch.
    pub url: String,
    /// Where to write the body.
    #[arg(short, long, default_value = "download.bin")]
    pub output: PathBuf,
    /// Contact address for the User-Agent.
    #[arg(long, env = "DOCSTOKG_MAILTO")]
    pub mailto: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(
            parse_rate("crossref=10:5").unwrap(),
            RateSpec {
                key: "crossref".into(),
                rate: 10.0,
                burst: Some(5)
            }
        );
        assert_eq!(parse_rate("arxiv.org=0.33").unwrap().burst, None);
        for bad in ["x", "=1", "x=0", "x=-1", "x=abc", "x=1:0", "x=1:z", "x=NaN", "x=inf"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        // hosts, host:port and IPv6 are keys; URLs are not
        assert_eq!(parse_rate("127.0.0.1=1000:100").unwrap().key, "127.0.0.1");
        assert_eq!(parse_rate("127.0.0.1:8080=5").unwrap().key, "127.0.0.1:8080");
        let v6 = parse_rate("[::1]:8080=5:2").unwrap();
        assert_eq!((v6.key.as_str(), v6.rate, v6.burst), ("[::1]:8080", 5.0, Some(2)));
        assert_eq!(v6.to_string(), "[::1]:8080=5:2");
        let err = parse_rate("http://127.0.0.1:8080=5").unwrap_err();
        assert!(err.contains("not a URL"), "{err}");
        assert_eq!(parse_default_rate("20").unwrap(), Quota::new(20.0, 1));
        assert_eq!(parse_default_rate("5:5").unwrap(), Quota::new(5.0, 5));
        for bad in ["", "0", "x", "5:0", "a=5"] {
            assert!(parse_default_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_parse() {
        use std::time::Duration;
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 90s "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("3h"), Ok(Duration::from_secs(3 * 3600)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["", "s", "-1", "1.5s", "10w", "ten", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("10w").unwrap_err().contains("ms, s, m, h or d"));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("2048"), Ok(2048));
        assert_eq!(parse_bytes(" 500M "), Ok(500 << 20));
        assert_eq!(parse_bytes("4G"), Ok(4 << 30));
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("64kb"), Ok(64 << 10));
        assert_eq!(parse_bytes("1T"), Ok(1 << 40));
        for bad in ["", "M", "-1", "1.5G", "10X", "ten", "99999999999999999999", "16777216T"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
