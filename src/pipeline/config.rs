//! The pipeline's configuration: its run ([`PipelineConfig`]), and the fallback's tiers of
//! resolvers and per-work budgets ([`FallbackConfig`]).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::download::DownloadOptions;
use crate::resolvers::{ResolverConfig, RESOLVER_NAMES};

/// What a [`Pipeline`](super::Pipeline) needs besides the stack, the ledger and the manifest.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The output folder.
    pub out_dir: PathBuf,
    /// This run's id (on every manifest line and ledger job).
    pub run_id: String,
    /// This worker's name in the ledger (unique per process).
    pub worker_id: String,
    /// Works processed at once. A work waiting for a host that is not ready (the crawl
    /// frontier) gives its slot to another meanwhile: up to four times as many works
    /// more (at least 64) may wait so, their leases held.
    pub workers: usize,
    /// Tiers and budgets.
    pub fallback: FallbackConfig,
    /// Resolver base URLs and contact address.
    pub resolvers: ResolverConfig,
    /// Download limits.
    pub download: DownloadOptions,
    /// How long a work's lease lasts without a heartbeat.
    pub lease_ttl: Duration,
    /// The longest the second pass waits for the providers of deferred works to accept
    /// again ([`DEFAULT_SECOND_PASS_MAX_WAIT`](super::DEFAULT_SECOND_PASS_MAX_WAIT) by
    /// default); works expected back later stay deferred for the next run. Zero: no wait.
    pub second_pass_max_wait: Duration,
    /// Re-hash (SHA-256) the file of a work the ledger records as downloaded before
    /// skipping it; off by default, as it reads every file. The file's presence and size
    /// are always checked: a work whose file is missing or changed is downloaded again.
    pub verify_existing: bool,
    /// Which works of the input are left out before any request (`--only-oa`, years,
    /// `--type`); [`WorkFilter::default`](crate::input::WorkFilter) keeps all.
    pub filter: crate::input::WorkFilter,
    /// Where finished PDFs go: `out_dir` ([`Output::Folder`](crate::download::Output)), or
    /// an object store, `out_dir` then only staging them.
    pub output: crate::download::Output,
}

impl PipelineConfig {
    /// A configuration with the runner's defaults: output to the folder `out_dir`, this
    /// process as the worker ([`LeaseOwner::current`](crate::ledger::LeaseOwner::current)),
    /// 8 works at once, the default tiers and resolvers, 120 s leases, every work kept.
    /// Change the fields you need; new settings get a default here, so code that starts
    /// from `new` keeps compiling when one is added.
    ///
    /// ```
    /// use contentdownload::pipeline::PipelineConfig;
    ///
    /// let mut config = PipelineConfig::new("pdfs", "run-1");
    /// config.workers = 4;
    /// assert_eq!(config.run_id, "run-1");
    /// ```
    pub fn new(out_dir: impl Into<PathBuf>, run_id: impl Into<String>) -> Self {
        PipelineConfig {
            out_dir: out_dir.into(),
            run_id: run_id.into(),
            worker_id: crate::ledger::LeaseOwner::current().to_string(),
            workers: 8,
            fallback: FallbackConfig::default(),
            resolvers: ResolverConfig::default(),
            download: DownloadOptions::default(),
            lease_ttl: Duration::from_secs(120),
            second_pass_max_wait: super::DEFAULT_SECOND_PASS_MAX_WAIT,
            verify_existing: false,
            filter: crate::input::WorkFilter::default(),
            output: crate::download::Output::default(),
        }
    }
}

/// One tier: resolvers asked together, `parallel` at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    /// The tier's name (`direct_oa`).
    pub name: String,
    /// Resolver names, in order of preference.
    pub resolvers: Vec<String>,
    /// How many of its resolvers run at once (at least 1).
    pub parallel: usize,
}

/// How a work falls back from one source to the next, and its budgets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// The tiers, tried in order until one gives a valid PDF.
    pub tiers: Vec<TierConfig>,
    /// Time allowed for one work, all tiers together (default 120 000 ms).
    pub total_timeout_ms: u64,
    /// Candidate downloads allowed for one work (default 20).
    pub max_attempts: u32,
    /// Candidate downloads of one work running at once (default 3).
    pub max_concurrent: usize,
    /// Leave the `wayback` resolver out of every tier.
    pub disable_wayback: bool,
    /// How often one URL is tried again when its body was cut or stalled (default 2).
    pub body_retries: u32,
    /// How long a resolver's answer for a work is remembered in the ledger, in seconds
    /// (default [`DEFAULT_RESOLVER_CACHE_TTL`], 30 days; `0` remembers nothing). Needs a
    /// ledger: without one every run asks again.
    pub resolver_cache_ttl_secs: u64,
}

/// How long a resolver's answer is remembered by default: 30 days.
pub const DEFAULT_RESOLVER_CACHE_TTL: Duration = Duration::from_secs(30 * 86_400);

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            tiers: FallbackConfig::default_tiers(),
            total_timeout_ms: 120_000,
            max_attempts: 20,
            max_concurrent: 3,
            disable_wayback: false,
            body_retries: 2,
            resolver_cache_ttl_secs: DEFAULT_RESOLVER_CACHE_TTL.as_secs(),
        }
    }
}

/// A fallback setting that cannot be used; says which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid fallback setting `{field}`: {reason}")]
pub struct FallbackConfigError {
    /// The setting.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl FallbackConfig {
    /// [`DEFAULT_TIERS`](crate::resolvers::DEFAULT_TIERS): direct_oa (openalex, unpaywall,
    /// arxiv, pmc, europe_pmc; parallel 2) → repositories (core, semantic_scholar, doaj,
    /// zenodo, figshare, hal, osf, openaire; parallel 2) → doi (crossref, landing; parallel 1)
    /// → archive (wayback; parallel 1).
    pub fn default_tiers() -> Vec<TierConfig> {
        crate::resolvers::DEFAULT_TIERS
            .iter()
            .map(|(name, resolvers, parallel)| TierConfig {
                name: (*name).to_owned(),
                resolvers: resolvers.iter().map(|r| r.to_string()).collect(),
                parallel: *parallel,
            })
            .collect()
    }

    /// Parses a `--fallback-tier` value: `NAME=r1,r2[:parallel=N]`, or one of the default
    /// tier names with an optional `:parallel=N`.
    pub fn parse_tier(spec: &str) -> Result<TierConfig, FallbackConfigError> {
        let err = |reason: String| FallbackConfigError {
            field: "fallback-tier".into(),
            reason,
        };
        let (head, parallel) = match spec.split_once(":parallel=") {
            Some((h, p)) => (
                h,
                Some(
                    p.trim()
                        .parse::<usize>()
                        .map_err(|_| err(format!("bad parallel in {spec:?}")))?,
                ),
            ),
            None => (spec, None),
        };
        let mut tier = match head.split_once('=') {
            Some((name, list)) => TierConfig {
                name: name.trim().to_owned(),
                resolvers: list
                    .split(',')
                    .map(|r| r.trim().to_owned())
                    .filter(|r| !r.is_empty())
                    .collect(),
                parallel: 1,
            },
            None => FallbackConfig::default_tiers()
                .into_iter()
                .find(|t| t.name == head.trim())
                .ok_or_else(|| {
                    err(format!(
                        "{head:?} is not a default tier (direct_oa, repositories, doi, archive); write NAME=resolver,resolver"
                    ))
                })?,
        };
        if let Some(p) = parallel {
            tier.parallel = p;
        }
        Ok(tier)
    }

    /// Checks the settings: known resolvers, non-empty tiers, parallelism and budgets > 0.
    pub fn validate(&self) -> Result<(), FallbackConfigError> {
        let err = |field: &str, reason: String| FallbackConfigError {
            field: field.to_owned(),
            reason,
        };
        if self.tiers.is_empty() {
            return Err(err("tiers", "at least one tier is needed".into()));
        }
        for t in &self.tiers {
            if t.resolvers.is_empty() {
                return Err(err("tiers", format!("tier {:?} has no resolvers", t.name)));
            }
            if t.parallel == 0 {
                return Err(err("tiers", format!("tier {:?} has parallel = 0", t.name)));
            }
            if let Some(unknown) = t.resolvers.iter().find(|r| !RESOLVER_NAMES.contains(&r.as_str())) {
                return Err(err(
                    "tiers",
                    format!(
                        "unknown resolver {unknown:?} in tier {:?}; known: {}",
                        t.name,
                        RESOLVER_NAMES.join(", ")
                    ),
                ));
            }
        }
        if self.total_timeout_ms == 0 {
            return Err(err("total_timeout_ms", "must be greater than 0".into()));
        }
        if self.max_attempts == 0 {
            return Err(err("max_attempts", "must be greater than 0".into()));
        }
        if self.max_concurrent == 0 {
            return Err(err("max_concurrent", "must be greater than 0".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_and_validate() {
        let t = FallbackConfig::parse_tier("fast=unpaywall,arxiv:parallel=3").unwrap();
        assert_eq!(t.resolvers, ["unpaywall", "arxiv"]);
        assert_eq!(t.parallel, 3);
        let t = FallbackConfig::parse_tier("archive:parallel=2").unwrap();
        assert_eq!((t.resolvers.as_slice(), t.parallel), (&["wayback".to_string()][..], 2));
        assert!(FallbackConfig::parse_tier("nope").is_err());
        assert!(FallbackConfig::parse_tier("x=a:parallel=zz").is_err());
        assert!(FallbackConfig::default().validate().is_ok());
        let bad = FallbackConfig {
            tiers: vec![FallbackConfig::parse_tier("x=unpaywal").unwrap()],
            ..FallbackConfig::default()
        };
        let e = bad.validate().unwrap_err();
        assert!(e.to_string().contains("unknown resolver \"unpaywal\""), "{e}");
    }
}
