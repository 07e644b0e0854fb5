//! [`RunSettings`]: the effective settings of a run, from flags, environment, a TOML file
//! and defaults, in that order of precedence.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::args::{parse_bytes, parse_default_rate, parse_duration, parse_rate, LogFormat, RateSpec, RunArgs, Secret};
use crate::download::{Durability, DEFAULT_MAX_BYTES, MIN_PDF_BYTES};
use crate::layers::rate_limit::{normalize_rate_key, Quota, RateLimitConfig};
use crate::ledger::{redact_url, LedgerConfig, DEFAULT_CONNECT_TIMEOUT};
use crate::pipeline::{FallbackConfig, DEFAULT_SECOND_PASS_MAX_WAIT};
use crate::resolvers::{resolver_by_name, ApiKeys};
use crate::service::HttpConfig;

/// Where the works come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// OpenAlex JSONL from a file, or standard input for `-`.
    Works(PathBuf),
    /// A list of DOIs.
    Dois(PathBuf),
    /// An OpenAlex search.
    Topic {
        /// The search text.
        text: String,
        /// First publication year.
        year_start: Option<i32>,
        /// Last publication year.
        year_end: Option<i32>,
        /// At most this many works.
        max: Option<u64>,
    },
}

/// The TOML configuration file: the same settings as the flags (without the source).
///
/// ```toml
/// out = "pdfs"
/// mailto = "me@example.org"
/// workers = 16
/// enable_provider_learning = true
/// default_rate = "5:5"
/// [rates]
/// crossref = "10:5"
/// "arxiv.org" = "0.33"
/// "127.0.0.1" = "1000:100"
/// [resolver_base]
/// unpaywall = "http://127.0.0.1:8080"
/// [api_keys]
/// core = "…"
/// [fallback]
/// max_attempts = 10
/// [http]
/// connect_timeout_ms = 5000
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// Output folder, or an object store's URL (`s3://bucket/prefix`).
    pub out: Option<PathBuf>,
    /// The local state folder with an object-store `out`.
    pub state: Option<PathBuf>,
    /// Contact address.
    pub mailto: Option<String>,
    /// Works at once.
    pub workers: Option<usize>,
    /// Requests in flight to one host at once.
    pub max_per_host: Option<usize>,
    /// `KEY = "RATE[:BURST]"`: a provider name, a host (any port) or `host:port`.
    pub rates: BTreeMap<String, String>,
    /// `"RATE[:BURST]"` of hosts no key names (`--default-rate`).
    pub default_rate: Option<String>,
    /// Contextual retry gate.
    pub enable_contextual_retry: Option<bool>,
    /// Provider learning gate.
    pub enable_provider_learning: Option<bool>,
    /// Learned state file.
    pub provider_learning_path: Option<PathBuf>,
    /// Idempotency / ledger gate.
    pub enable_idempotency: Option<bool>,
    /// Ledger URL.
    pub ledger: Option<String>,
    /// How long to wait for a PostgreSQL ledger: seconds, or a string with a unit (`"5s"`).
    #[serde(deserialize_with = "de_duration")]
    pub ledger_connect_timeout: Option<Duration>,
    /// Run id.
    pub run_id: Option<String>,
    /// Lease TTL in seconds.
    pub lease_ttl_secs: Option<u64>,
    /// The second pass's longest wait: seconds, or a string with a unit (`"90s"`).
    #[serde(deserialize_with = "de_duration")]
    pub second_pass_max_wait: Option<Duration>,
    /// How long resolver answers are remembered: seconds, or a string with a unit (`"30d"`);
    /// `0` turns it off.
    #[serde(deserialize_with = "de_duration")]
    pub resolver_cache_ttl: Option<Duration>,
    /// Fallback tiers and budgets.
    pub fallback: Option<FallbackConfig>,
    /// Never use the Wayback Machine.
    pub disable_wayback_fallback: Option<bool>,
    /// The largest PDF accepted: bytes (`1048576`), or a string with a unit (`"500M"`).
    #[serde(deserialize_with = "de_bytes")]
    pub max_bytes: Option<u64>,
    /// When PDFs are forced to disk: `"file"`, `"batch"` or `"none"` (`--durability`).
    pub durability: Option<Durability>,
    /// Re-hash the recorded files of downloaded works (`--verify-existing`).
    pub verify_existing: Option<bool>,
    /// Fetch landing pages whatever robots.txt says (`--ignore-robots`).
    pub ignore_robots: Option<bool>,
    /// Resolver base URLs.
    pub resolver_base: BTreeMap<String, String>,
    /// Provider API keys (`core = "…"`), under the flags and the environment variables.
    pub api_keys: BTreeMap<String, Secret>,
    /// The shared client's settings.
    pub http: Option<HttpConfig>,
    /// Log format.
    pub log_format: Option<LogFormat>,
    /// No progress output.
    pub quiet: Option<bool>,
}

impl FileConfig {
    /// Reads and parses a TOML file; the error names the file and what is wrong in it.
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("config file {}: {e}", path.display()))
    }
}

/// The default `--state` folder, with an object-store `--out`.
pub const DEFAULT_STATE_DIR: &str = "contentdownload-state";

/// Whether `out` names an object store (`s3://`, `s3a://`, `file://`) rather than a folder.
pub fn is_store_url(out: &str) -> bool {
    ["s3://", "s3a://", "file://"].iter().any(|s| out.starts_with(s))
}

/// The effective settings of `contentdownload run`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// Where the works come from.
    pub source: Source,
    /// Output folder; with an object store ([`store`](Self::store)), the local state
    /// folder (ledger, manifest, attempts.csv, learned state, PDFs being checked).
    pub out: PathBuf,
    /// The object store finished PDFs go to (`--out s3://bucket/prefix`), if not `out`.
    pub store: Option<String>,
    /// Contact address (never logged).
    pub mailto: Option<String>,
    /// Rate limits by rate key: a provider name, a host (any port) or `host:port`.
    pub rates: Vec<RateSpec>,
    /// The rate limit of hosts that no key names (`--default-rate`).
    pub default_rate: Quota,
    /// Works at once.
    pub workers: usize,
    /// Requests in flight to one host at once.
    pub max_per_host: usize,
    /// Gate: contextual retry.
    pub contextual_retry: bool,
    /// Gate: provider learning.
    pub provider_learning: bool,
    /// Learned state file.
    pub provider_learning_path: PathBuf,
    /// Gate: idempotency keys and the ledger.
    pub idempotency: bool,
    /// Ledger URL.
    pub ledger: String,
    /// How long to wait for a PostgreSQL ledger to answer.
    pub ledger_connect_timeout: Duration,
    /// Run id.
    pub run_id: String,
    /// Lease TTL.
    pub lease_ttl_secs: u64,
    /// The second pass's longest wait for the providers of deferred works.
    pub second_pass_max_wait: Duration,
    /// Fallback tiers and budgets.
    pub fallback: FallbackConfig,
    /// The largest PDF accepted, in bytes.
    pub max_bytes: u64,
    /// When PDFs are forced to disk (`--durability`, default `batch`).
    pub durability: Durability,
    /// Re-hash the recorded files of downloaded works (the size is always checked).
    pub verify_existing: bool,
    /// Works left out before any request (`--only-oa`, `--year-start`/`--year-end`, `--type`).
    pub filter: crate::input::WorkFilter,
    /// Fetch landing pages whatever robots.txt says.
    pub ignore_robots: bool,
    /// Resolver base URLs.
    pub resolver_bases: BTreeMap<String, String>,
    /// Provider API keys (redacted in `Debug`).
    pub api_keys: ApiKeys,
    /// Warnings to tell the user at start: a resolver of tiers the user chose
    /// (`--fallback-tier` or the config file) left out for want of its key.
    pub notes: Vec<String>,
    /// The same, for the default tiers: logged at INFO, since the user did not ask for
    /// those resolvers by name (CORE without `CORE_API_KEY` on every plain run).
    pub info: Vec<String>,
    /// The shared client's settings.
    pub http: HttpConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// No progress output.
    pub quiet: bool,
}

/// A duration in the TOML file: whole seconds (`90`) or a string with a unit (`"1500ms"`).
fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Secs(u64),
        Text(String),
    }
    match Value::deserialize(d)? {
        Value::Secs(n) => Ok(Some(Duration::from_secs(n))),
        Value::Text(t) => parse_duration(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A size in the TOML file: bytes (`1048576`) or a string with a unit (`"500M"`).
fn de_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Bytes(u64),
        Text(String),
    }
    match Value::deserialize(d)? {
        Value::Bytes(n) => Ok(Some(n)),
        Value::Text(t) => parse_bytes(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

fn gate(enable: Option<bool>, disable: bool, file: Option<bool>) -> bool {
    if disable {
        false
    } else {
        enable.or(file).unwrap_or(true)
    }
}

/// The API keys: the file's, then the environment's, then the flags' (each replacing the
/// one before for its provider).
fn api_keys(args: &RunArgs, file: &BTreeMap<String, Secret>) -> Result<ApiKeys, String> {
    let mut keys = ApiKeys::default();
    for (provider, key) in file {
        keys.insert(&provider.to_ascii_lowercase(), key.expose())
            .map_err(|e| format!("config file api_keys: {e}"))?;
    }
    let env = [
        ("openalex", "OPENALEX_API_KEY", &args.openalex_api_key),
        ("core", "CORE_API_KEY", &args.core_api_key),
        ("semantic_scholar", "S2_API_KEY", &args.s2_api_key),
        ("crossref", "CROSSREF_PLUS_TOKEN", &args.crossref_plus_token),
    ];
    for (provider, var, key) in env {
        // an empty variable is the same as none (`CORE_API_KEY= contentdownload run …`)
        if let Some(key) = key.as_ref().filter(|k| !k.expose().trim().is_empty()) {
            keys.insert(provider, key.expose()).map_err(|e| format!("{var}: {e}"))?;
        }
    }
    for spec in &args.api_keys {
        if spec.provider.is_empty() {
            return Err("--api-key: expected PROVIDER=KEY (the value is not shown)".into());
        }
        keys.insert(&spec.provider, spec.key.expose())
            .map_err(|e| format!("--api-key: {e}"))?;
    }
    Ok(keys)
}

/// Takes out of the tiers each resolver that needs a key it has not got; one line for each,
/// to tell at start (not a failure for every work).
fn leave_out_keyless(fallback: &mut FallbackConfig, keys: &ApiKeys) -> Vec<String> {
    let mut notes = Vec::new();
    for tier in &mut fallback.tiers {
        tier.resolvers.retain(|name| {
            let needs = resolver_by_name(name).and_then(|r| r.required_key());
            match needs {
                Some(provider) if keys.get(provider).is_none() => {
                    let var = crate::resolvers::KEYED_PROVIDERS
                        .iter()
                        .find(|p| p.name == provider)
                        .map_or("", |p| p.env);
                    let note =
                        format!("resolver {name} skipped: it needs an API key (set {var} or --api-key {provider}=KEY)");
                    if !notes.contains(&note) {
                        notes.push(note);
                    }
                    false
                }
                _ => true,
            }
        });
    }
    fallback.tiers.retain(|t| !t.resolvers.is_empty());
    notes
}

impl RunSettings {
    /// Resolves the settings. `generated_run_id` is used when none is given.
    pub fn resolve(args: &RunArgs, generated_run_id: impl FnOnce() -> String) -> Result<RunSettings, String> {
        let file = match &args.config {
            Some(path) => FileConfig::load(path)?,
            None => FileConfig::default(),
        };
        let source = match (&args.input, &args.dois, &args.topic) {
            (Some(p), None, None) => Source::Works(p.clone()),
            (None, Some(p), None) => Source::Dois(p.clone()),
            (None, None, Some(t)) => Source::Topic {
                text: t.clone(),
                year_start: args.year_start,
                year_end: args.year_end,
                max: args.max,
            },
            (None, None, None) => return Err("no works given: use --input FILE, --dois FILE or --topic TEXT".into()),
            _ => return Err("give only one of --input, --dois and --topic".into()),
        };
        let out = args.out.clone().or(file.out).unwrap_or_else(|| PathBuf::from("pdfs"));
        let state = args.state.clone().or(file.state);
        let (out, store) = match out.to_str().filter(|o| is_store_url(o)) {
            Some(url) if cfg!(feature = "s3") => (
                state.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
                Some(url.to_owned()),
            ),
            Some(_) => return Err("--out names an object store: this build has no object-store output (build with --features s3)".into()),
            None if state.is_some() => return Err("--state goes with an object-store --out (s3://BUCKET/PREFIX); with a folder --out, the state lives in that folder".into()),
            None => (out, None),
        };

        let mut rates = Vec::new();
        for (key, value) in &file.rates {
            rates.push(parse_rate(&format!("{key}={value}")).map_err(|e| format!("config file rates: {e}"))?);
        }
        // flags replace a file entry with the same key (keys are case-insensitive)
        for spec in &args.rates {
            let key = normalize_rate_key(&spec.key);
            rates.retain(|r: &RateSpec| normalize_rate_key(&r.key) != key);
            rates.push(spec.clone());
        }
        let default_rate = match (args.default_rate, &file.default_rate) {
            (Some(q), _) => q,
            (None, Some(text)) => parse_default_rate(text).map_err(|e| format!("config file default_rate: {e}"))?,
            (None, None) => RateLimitConfig::default().default,
        };

        let workers = args.workers.or(file.workers).unwrap_or(8);
        if workers == 0 {
            return Err("--workers must be at least 1".into());
        }
        let max_per_host = args.max_per_host.or(file.max_per_host).unwrap_or(4);
        if max_per_host == 0 {
            return Err("--max-per-host must be at least 1".into());
        }

        let mut fallback = file.fallback.unwrap_or_default();
        if !args.fallback_tiers.is_empty() {
            fallback.tiers = args.fallback_tiers.clone();
        }
        if let Some(ms) = args.fallback_total_timeout_ms {
            fallback.total_timeout_ms = ms;
        }
        if let Some(n) = args.fallback_max_attempts {
            fallback.max_attempts = n;
        }
        if let Some(n) = args.fallback_max_concurrent {
            fallback.max_concurrent = n;
        }
        if let Some(ttl) = args.resolver_cache_ttl.or(file.resolver_cache_ttl) {
            fallback.resolver_cache_ttl_secs = ttl.as_secs();
        }
        fallback.disable_wayback |= args.disable_wayback_fallback || file.disable_wayback_fallback.unwrap_or(false);
        fallback.validate().map_err(|e| e.to_string())?;

        let max_bytes = args.max_bytes.or(file.max_bytes).unwrap_or(DEFAULT_MAX_BYTES);
        if max_bytes < MIN_PDF_BYTES {
            return Err(format!(
                "--max-bytes must be at least {MIN_PDF_BYTES} (the smallest PDF accepted), not {max_bytes}"
            ));
        }

        let mut resolver_bases = file.resolver_base.clone();
        resolver_bases.extend(args.resolver_bases.iter().cloned());
        if let Some(bad) = resolver_bases
            .keys()
            .find(|k| !crate::resolvers::RESOLVER_NAMES.contains(&k.as_str()))
        {
            return Err(format!("config file resolver_base: unknown resolver {bad:?}"));
        }

        let api_keys = api_keys(args, &file.api_keys)?;
        let default_tiers = fallback.tiers == FallbackConfig::default().tiers;
        let notes = leave_out_keyless(&mut fallback, &api_keys);
        if fallback.tiers.is_empty() {
            return Err(format!("{}; no resolver is left to ask", notes.join("; ")));
        }
        let (notes, info) = match default_tiers {
            true => (Vec::new(), notes),
            false => (notes, Vec::new()),
        };

        let mailto = args.mailto.clone().or(file.mailto).filter(|m| !m.trim().is_empty());
        let mut http = file.http.unwrap_or_default();
        if mailto.is_some() {
            http.mailto = mailto.clone();
        }
        let ledger = args
            .ledger
            .clone()
            .or(file.ledger)
            .unwrap_or_else(|| format!("sqlite://{}", out.join("ledger.sqlite").display()));
        let idempotency = gate(
            args.enable_idempotency,
            args.disable_idempotency,
            file.enable_idempotency,
        );
        if idempotency {
            // an unknown scheme is a usage error, found before anything is created
            LedgerConfig::new(ledger.clone())
                .sqlite_path()
                .map_err(|e| format!("--ledger {}: {e}", redact_url(&ledger)))?;
        }
        let ledger_connect_timeout = args
            .ledger_connect_timeout
            .or(file.ledger_connect_timeout)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        if ledger_connect_timeout.is_zero() {
            return Err("--ledger-connect-timeout must be more than 0 (e.g. 10s)".into());
        }
        let provider_learning_path = args
            .provider_learning_path
            .clone()
            .or(file.provider_learning_path)
            .unwrap_or_else(|| out.join("provider_learning.json"));
        let run_id = args.run_id.clone().or(file.run_id).unwrap_or_else(generated_run_id);
        if run_id.is_empty() || run_id.len() > 128 || run_id.chars().any(|c| c.is_control()) {
            return Err("--run-id must be 1 to 128 printable characters".into());
        }

        Ok(RunSettings {
            source,
            out,
            store,
            mailto,
            rates,
            default_rate,
            workers,
            max_per_host,
            contextual_retry: gate(
                args.enable_contextual_retry,
                args.disable_contextual_retry,
                file.enable_contextual_retry,
            ),
            provider_learning: gate(
                args.enable_provider_learning,
                args.disable_provider_learning,
                file.enable_provider_learning,
            ),
            provider_learning_path,
            idempotency,
            ledger,
            ledger_connect_timeout,
            run_id,
            lease_ttl_secs: args.lease_ttl_secs.or(file.lease_ttl_secs).unwrap_or(120).max(1),
            second_pass_max_wait: args
                .second_pass_max_wait
                .or(file.second_pass_max_wait)
                .unwrap_or(DEFAULT_SECOND_PASS_MAX_WAIT),
            fallback,
            max_bytes,
            durability: args.durability.or(file.durability).unwrap_or(Durability::Batch),
            verify_existing: args.verify_existing.or(file.verify_existing).unwrap_or(false),
            filter: crate::input::WorkFilter {
                only_oa: args.only_oa.unwrap_or(false),
                year_start: args.year_start,
                year_end: args.year_end,
                types: args
                    .types
                    .iter()
                    .map(|t| t.trim().to_owned())
                    .filter(|t| !t.is_empty())
                    .collect(),
            },
            ignore_robots: args.ignore_robots.or(file.ignore_robots).unwrap_or(false),
            resolver_bases,
            api_keys,
            notes,
            info,
            http,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            quiet: args.quiet || file.quiet.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::runner::args::{Cli, Command};

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["contentdownload", "run"];
        full.extend_from_slice(argv);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Run(args) => *args,
            other => panic!("{other:?}"),
        }
    }

    fn resolve(argv: &[&str]) -> Result<RunSettings, String> {
        RunSettings::resolve(&run_args(argv), || "generated".into())
    }

    #[test]
    fn an_object_store_out_keeps_the_state_in_the_state_folder() {
        let s = resolve(&["--input", "a", "--out", "s3://bucket/pdfs"]);
        if cfg!(feature = "s3") {
            let s = s.unwrap();
            assert_eq!(s.store.as_deref(), Some("s3://bucket/pdfs"));
            assert_eq!(s.out, PathBuf::from(DEFAULT_STATE_DIR));
            assert_eq!(s.ledger, format!("sqlite://{DEFAULT_STATE_DIR}/ledger.sqlite"));
            assert_eq!(
                s.provider_learning_path,
                PathBuf::from(DEFAULT_STATE_DIR).join("provider_learning.json")
            );
            let s = resolve(&["--input", "a", "--out", "s3://bucket/pdfs", "--state", "st"]).unwrap();
            assert_eq!(s.out, PathBuf::from("st"));
        } else {
            assert!(s.unwrap_err().contains("--features s3"));
        }
        let e = resolve(&["--input", "a", "--out", "pdfs", "--state", "st"]).unwrap_err();
        assert!(e.contains("--state goes with an object-store --out"), "{e}");
        assert_eq!(resolve(&["--input", "a"]).unwrap().store, None);
    }

    #[test]
    fn defaults() {
        let s = resolve(&["--input", "works.jsonl"]).unwrap();
        assert_eq!(s.source, Source::Works("works.jsonl".into()));
        assert_eq!(s.out, PathBuf::from("pdfs"));
        assert!(s.contextual_retry && s.provider_learning && s.idempotency);
        assert_eq!(s.ledger, "sqlite://pdfs/ledger.sqlite");
        assert_eq!(s.provider_learning_path, PathBuf::from("pdfs/provider_learning.json"));
        assert_eq!(s.run_id, "generated");
        let mut without_core = FallbackConfig::default();
        without_core.tiers[1].resolvers.retain(|r| r != "core");
        assert_eq!(s.fallback, without_core, "core needs a key, and none was given");
        // the default tiers: told at INFO, not as a warning
        assert!(s.notes.is_empty(), "{:?}", s.notes);
        assert_eq!(s.info.len(), 1);
        assert!(
            s.info[0].contains("core") && s.info[0].contains("CORE_API_KEY"),
            "{:?}",
            s.info
        );
        // tiers the user chose: a warning
        let s = resolve(&["--input", "w", "--fallback-tier", "open=unpaywall,core"]).unwrap();
        assert!(s.info.is_empty(), "{:?}", s.info);
        assert_eq!(s.notes.len(), 1, "{:?}", s.notes);
        assert!(s.notes[0].contains("resolver core skipped"), "{:?}", s.notes);
        assert_eq!(s.workers, 8);
        assert_eq!(s.second_pass_max_wait, DEFAULT_SECOND_PASS_MAX_WAIT);
        assert_eq!(s.ledger_connect_timeout, Duration::from_secs(10));
        assert_eq!(s.default_rate, Quota::new(5.0, 5));
    }

    #[test]
    fn api_keys_from_flag_environment_or_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[api_keys]\ncore = \"FILEKEY\"\nopenalex = \"OAFILE\"\n").unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--input", "w", "--config", p]).unwrap();
        assert_eq!(s.api_keys.get("core"), Some("FILEKEY"));
        assert!(s.notes.is_empty(), "core has its key: {:?}", s.notes);
        assert!(s.fallback.tiers[1].resolvers.contains(&"core".to_string()));
        // the hidden flags are the environment variables' (CORE_API_KEY, ...)
        let s = resolve(&[
            "--input",
            "w",
            "--config",
            p,
            "--core-api-key",
            "ENVKEY",
            "--s2-api-key",
            "S2",
        ])
        .unwrap();
        assert_eq!(s.api_keys.get("core"), Some("ENVKEY"), "environment over file");
        assert_eq!(s.api_keys.get("semantic_scholar"), Some("S2"));
        let s = resolve(&[
            "--input",
            "w",
            "--config",
            p,
            "--core-api-key",
            "ENVKEY",
            "--api-key",
            "core=FLAGKEY",
            "--api-key",
            "crossref=PLUS",
        ])
        .unwrap();
        assert_eq!(s.api_keys.get("core"), Some("FLAGKEY"), "flag over environment");
        assert_eq!(s.api_keys.get("crossref"), Some("PLUS"));
        assert_eq!(s.api_keys.get("openalex"), Some("OAFILE"));
        // never in Debug
        let shown = format!("{s:?}");
        for secret in ["FLAGKEY", "ENVKEY", "FILEKEY", "PLUS", "OAFILE"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        // errors name the provider, never the key
        let err = resolve(&["--input", "w", "--api-key", "nope=SECRETX"]).unwrap_err();
        assert!(err.contains("nope") && !err.contains("SECRETX"), "{err}");
        let err = resolve(&["--input", "w", "--api-key", "SECRETX"]).unwrap_err();
        assert!(err.contains("PROVIDER=KEY") && !err.contains("SECRETX"), "{err}");
        let err = resolve(&["--input", "w", "--core-api-key", "a b"]).unwrap_err();
        assert!(err.contains("CORE_API_KEY") && !err.contains("a b"), "{err}");
        // only keyless tiers left: a usage error, not a run that asks nothing
        let err = resolve(&["--input", "w", "--fallback-tier", "r=core"]).unwrap_err();
        assert!(err.contains("core") && err.contains("no resolver"), "{err}");
    }

    #[test]
    fn default_rate_from_flag_file_or_default() {
        let s = resolve(&["--input", "w", "--default-rate", "20:4"]).unwrap();
        assert_eq!(s.default_rate, Quota::new(20.0, 4));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "default_rate = \"2\"\n[rates]\n\"Example.ORG\" = \"1\"\n").unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--input", "w", "--config", p, "--rate", "example.org=9"]).unwrap();
        assert_eq!(s.default_rate, Quota::new(2.0, 1), "file over default");
        assert_eq!(s.rates.len(), 1, "the flag replaces the file's key whatever its case");
        assert_eq!(s.rates[0].rate, 9.0);
        let s = resolve(&["--input", "w", "--config", p, "--default-rate", "7"]).unwrap();
        assert_eq!(s.default_rate, Quota::new(7.0, 1), "flag over file");
        std::fs::write(&path, "default_rate = \"fast\"\n").unwrap();
        let err = resolve(&["--input", "w", "--config", p]).unwrap_err();
        assert!(err.contains("default_rate"), "{err}");
    }

    #[test]
    fn gates_and_flags() {
        let s = resolve(&[
            "--dois",
            "d.txt",
            "--disable-idempotency",
            "--enable-provider-learning",
            "false",
            "--disable-contextual-retry",
            "--enable-contextual-retry",
            "--rate",
            "crossref=5:2",
            "--fallback-tier",
            "fast=unpaywall,arxiv:parallel=2",
            "--disable-wayback-fallback",
            "--resolver-base",
            "unpaywall=http://127.0.0.1:9/",
        ])
        .unwrap();
        assert!(!s.idempotency);
        assert!(!s.provider_learning);
        assert!(s.contextual_retry, "the later flag wins");
        assert_eq!(s.rates[0].burst, Some(2));
        assert_eq!(s.fallback.tiers[0].name, "fast");
        assert!(s.fallback.disable_wayback);
        assert_eq!(s.resolver_bases["unpaywall"], "http://127.0.0.1:9/");
    }

    #[test]
    fn usage_errors_are_clear() {
        assert!(resolve(&[]).unwrap_err().contains("--input FILE"));
        assert!(Cli::try_parse_from(["contentdownload", "run", "--input", "a", "--dois", "b"]).is_err());
        assert!(Cli::try_parse_from(["contentdownload", "run", "--input", "a", "--rate", "x"]).is_err());
        assert!(Cli::try_parse_from([
            "contentdownload",
            "run",
            "--input",
            "a",
            "--resolver-base",
            "nope=http://x"
        ])
        .is_err());
        assert!(resolve(&["--input", "a", "--workers", "0"])
            .unwrap_err()
            .contains("--workers"));
        assert!(resolve(&["--input", "a", "--ledger-connect-timeout", "0s"])
            .unwrap_err()
            .contains("--ledger-connect-timeout"));
        assert!(resolve(&["--input", "a", "--fallback-max-attempts", "0"])
            .unwrap_err()
            .contains("max_attempts"));
    }

    #[test]
    fn max_bytes_from_flag_file_or_default() {
        assert_eq!(resolve(&["--input", "w"]).unwrap().max_bytes, 4 << 30);
        assert_eq!(
            resolve(&["--input", "w", "--max-bytes", "2048"]).unwrap().max_bytes,
            2048
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let p = path.to_str().unwrap();
        for (text, want) in [("max_bytes = \"500M\"\n", 500 << 20), ("max_bytes = 65536\n", 65536)] {
            std::fs::write(&path, text).unwrap();
            assert_eq!(
                resolve(&["--input", "w", "--config", p]).unwrap().max_bytes,
                want,
                "{text}"
            );
        }
        let flag = resolve(&["--input", "w", "--config", p, "--max-bytes", "1G"]).unwrap();
        assert_eq!(flag.max_bytes, 1 << 30, "flag over file");
        let err = resolve(&["--input", "w", "--max-bytes", "1000"]).unwrap_err();
        assert!(err.contains("--max-bytes") && err.contains("1024"), "{err}");
    }

    #[test]
    fn ledger_schemes_are_checked() {
        let err = resolve(&["--input", "w", "--ledger", "mysql://u:pw@x/db"]).unwrap_err();
        assert!(err.contains("unknown ledger scheme `mysql:`"), "{err}");
        assert!(!err.contains("pw@"), "the password is redacted: {err}");
        assert!(resolve(&["--input", "w", "--ledger", "mysql://x", "--disable-idempotency"]).is_ok());
        assert!(resolve(&["--input", "w", "--ledger", "some/file.sqlite"]).is_ok());
    }

    #[test]
    fn file_settings_sit_under_flags() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            r#"
out = "from-file"
mailto = "file@example.org"
workers = 3
enable_idempotency = false
second_pass_max_wait = "1500ms"
ledger_connect_timeout = 3
resolver_cache_ttl = "7d"
[rates]
crossref = "2:1"
"arxiv.org" = "0.33"
[fallback]
max_attempts = 7
[http]
connect_timeout_ms = 1234
"#,
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let s = resolve(&["--input", "w", "--config", p, "--workers", "5", "--rate", "crossref=9"]).unwrap();
        assert_eq!(s.out, PathBuf::from("from-file"));
        assert_eq!(s.workers, 5, "flag over file");
        assert!(!s.idempotency, "file over default");
        assert_eq!(s.fallback.max_attempts, 7);
        assert_eq!(s.second_pass_max_wait, Duration::from_millis(1500), "file over default");
        assert_eq!(
            s.ledger_connect_timeout,
            Duration::from_secs(3),
            "whole seconds in the file"
        );
        assert_eq!(s.fallback.resolver_cache_ttl_secs, 7 * 86_400, "file over default");
        let zero = resolve(&[
            "--input",
            "w",
            "--config",
            p,
            "--second-pass-max-wait",
            "0",
            "--resolver-cache-ttl",
            "0",
        ])
        .unwrap();
        assert_eq!(zero.second_pass_max_wait, Duration::ZERO, "flag over file");
        assert_eq!(zero.fallback.resolver_cache_ttl_secs, 0, "flag over file");
        let default = resolve(&["--input", "w"]).unwrap();
        assert_eq!(default.fallback.resolver_cache_ttl_secs, 30 * 86_400);
        assert_eq!(s.http.connect_timeout_ms, 1234);
        assert_eq!(s.http.mailto.as_deref(), Some("file@example.org"));
        let crossref = s.rates.iter().find(|r| r.key == "crossref").unwrap();
        assert_eq!(crossref.rate, 9.0, "flag over file");
        assert!(s.rates.iter().any(|r| r.key == "arxiv.org"));

        std::fs::write(&path, "second_pass_max_wait = \"soon\"\n").unwrap();
        let err = resolve(&["--input", "w", "--config", p]).unwrap_err();
        assert!(err.contains("c.toml") && err.contains("soon"), "{err}");

        std::fs::write(&path, "wrokers = 3\n").unwrap();
        let err = resolve(&["--input", "w", "--config", p]).unwrap_err();
        assert!(err.contains("c.toml") && err.contains("wrokers"), "{err}");
    }

    #[test]
    fn verify_existing_is_off_unless_asked() {
        assert!(!resolve(&["--input", "w"]).unwrap().verify_existing);
        assert!(resolve(&["--input", "w", "--verify-existing"]).unwrap().verify_existing);
        assert!(
            !resolve(&["--input", "w", "--verify-existing", "false"])
                .unwrap()
                .verify_existing
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "verify_existing = true\n").unwrap();
        let p = path.to_str().unwrap();
        assert!(resolve(&["--input", "w", "--config", p]).unwrap().verify_existing);
        assert!(
            !resolve(&["--input", "w", "--config", p, "--verify-existing=false"])
                .unwrap()
                .verify_existing
        );
    }

    #[test]
    fn durability_is_batch_unless_asked() {
        assert_eq!(resolve(&["--input", "w"]).unwrap().durability, Durability::Batch);
        for (flag, want) in [
            ("file", Durability::File),
            ("NONE", Durability::None),
            ("batch", Durability::Batch),
        ] {
            assert_eq!(
                resolve(&["--input", "w", "--durability", flag]).unwrap().durability,
                want
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "durability = \"none\"\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(
            resolve(&["--input", "w", "--config", p]).unwrap().durability,
            Durability::None
        );
        assert_eq!(
            resolve(&["--input", "w", "--config", p, "--durability", "file"])
                .unwrap()
                .durability,
            Durability::File,
            "flag over file"
        );
        std::fs::write(&path, "durability = \"always\"\n").unwrap();
        let err = resolve(&["--input", "w", "--config", p]).unwrap_err();
        assert!(err.contains("durability"), "{err}");
        let argv = ["contentdownload", "run", "--input", "w", "--durability", "sometimes"];
        let err = Cli::try_parse_from(argv).unwrap_err().to_string();
        assert!(err.contains("file, batch or none"), "{err}");
    }

    #[test]
    fn robots_are_honoured_unless_asked() {
        assert!(!resolve(&["--input", "w"]).unwrap().ignore_robots);
        assert!(resolve(&["--input", "w", "--ignore-robots"]).unwrap().ignore_robots);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "ignore_robots = true\n").unwrap();
        let p = path.to_str().unwrap();
        assert!(resolve(&["--input", "w", "--config", p]).unwrap().ignore_robots);
        assert!(
            !resolve(&["--input", "w", "--config", p, "--ignore-robots=false"])
                .unwrap()
                .ignore_robots
        );
    }

    #[test]
    fn max_per_host_defaults_to_4_and_the_flag_wins_over_the_file() {
        assert_eq!(resolve(&["--input", "w"]).unwrap().max_per_host, 4);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "max_per_host = 2\n").unwrap();
        let p = path.to_str().unwrap();
        assert_eq!(resolve(&["--input", "w", "--config", p]).unwrap().max_per_host, 2);
        let s = resolve(&["--input", "w", "--config", p, "--max-per-host", "6"]).unwrap();
        assert_eq!(s.max_per_host, 6);
        let err = resolve(&["--input", "w", "--max-per-host", "0"]).unwrap_err();
        assert!(err.contains("--max-per-host"), "{err}");
    }
}
