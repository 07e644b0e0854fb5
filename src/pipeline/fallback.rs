//! The per-work fallback: ask the tiers' resolvers, download their candidates, keep the
//! first valid PDF.

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use http::Request;
use http_body_util::Full;
use tokio::time::Instant;

use super::config::FallbackConfig;
use crate::context::{OperationType, WorkId};
use crate::download::{file_stem, stage_pdf, DownloadFailure, DownloadOptions, Downloaded};
use crate::reason::{classify_error, ReasonCode};
use crate::resolvers::{resolver_by_name, HttpService, ResolveContext, Resolver};
use crate::works::{Candidate, Work};

/// URLs already tried in this run, shared by every work, so that no URL is fetched twice
/// (a deferred attempt gives its URL back for the second pass).
#[derive(Debug, Default)]
pub struct TriedUrls(Mutex<HashSet<String>>);

impl TriedUrls {
    /// Marks `url` as tried; `false` if it already was.
    pub fn insert(&self, url: &str) -> bool {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).insert(url.to_owned())
    }

    /// Gives a URL back (its attempt was deferred, not done).
    pub fn remove(&self, url: &str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(url);
    }
}

/// What the fallback needs from the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct FetchEnv<'a> {
    /// Resolver calls.
    pub resolve: &'a ResolveContext,
    /// The Download stack.
    pub download: &'a HttpService,
    /// The output folder.
    pub out_dir: &'a Path,
    /// URLs tried in this run.
    pub tried: &'a TriedUrls,
    /// Download limits.
    pub options: &'a DownloadOptions,
}

/// How one work's fallback ended.
#[derive(Debug)]
pub enum FetchResult {
    /// A valid PDF is in place.
    Downloaded {
        /// The file.
        file: Downloaded,
        /// The candidate it came from.
        candidate: Candidate,
        /// Candidate downloads started.
        attempts: u32,
    },
    /// Put off: a provider asked us to wait longer than we can (second pass).
    Deferred {
        /// Why.
        reason: ReasonCode,
        /// In words.
        detail: String,
        /// Candidate downloads started.
        attempts: u32,
    },
    /// No valid PDF.
    Failed {
        /// Why.
        reason: ReasonCode,
        /// In words.
        detail: String,
        /// Candidate downloads started.
        attempts: u32,
    },
}

struct Tier {
    resolvers: Vec<Arc<dyn Resolver>>,
    parallel: usize,
}

/// The fallback engine built from a [`FallbackConfig`].
pub struct Fallback {
    tiers: Vec<Tier>,
    config: FallbackConfig,
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fallback")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_deferral(reason: ReasonCode) -> bool {
    matches!(
        reason,
        ReasonCode::Deferred | ReasonCode::CoolingDown | ReasonCode::RateLimited | ReasonCode::Throttled
    )
}

#[derive(Default)]
struct Tally {
    attempts: u32,
    candidates: u32,
    deferred: Option<(ReasonCode, String)>,
    last: Option<(ReasonCode, String)>,
}

impl Tally {
    fn failure(&mut self, reason: ReasonCode, detail: String) {
        if is_deferral(reason) {
            self.deferred = Some((reason, detail));
        } else if reason != ReasonCode::FailedOver || self.last.is_none() {
            self.last = Some((reason, detail));
        }
    }
}

impl Fallback {
    /// Builds the tiers. Fails on an invalid configuration.
    pub fn new(config: FallbackConfig) -> Result<Fallback, super::config::FallbackConfigError> {
        config.validate()?;
        let tiers = config
            .tiers
            .iter()
            .map(|t| Tier {
                resolvers: t
                    .resolvers
                    .iter()
                    .filter(|r| !(config.disable_wayback && r.as_str() == "wayback"))
                    .filter_map(|r| resolver_by_name(r))
                    .collect(),
                parallel: t.parallel,
            })
            .filter(|t| !t.resolvers.is_empty())
            .collect();
        Ok(Fallback { tiers, config })
    }

    /// Finds and downloads a valid PDF for `work` within its budgets.
    pub async fn fetch(&self, work: &Work, env: FetchEnv<'_>) -> FetchResult {
        let deadline = Instant::now() + Duration::from_millis(self.config.total_timeout_ms);
        let mut tally = Tally::default();
        let outcome = tokio::time::timeout_at(deadline, self.run_tiers(work, env, &mut tally)).await;
        let attempts = tally.attempts;
        match outcome {
            Ok(Some((file, candidate))) => {
                return FetchResult::Downloaded {
                    file,
                    candidate,
                    attempts,
                }
            }
            Ok(None) => {}
            Err(_) => {
                return FetchResult::Failed {
                    reason: ReasonCode::BudgetExhausted,
                    detail: format!("no valid PDF within {} ms", self.config.total_timeout_ms),
                    attempts,
                }
            }
        }
        // Something was put off: even if other sources failed, the second pass may succeed.
        if let Some((reason, detail)) = tally.deferred.take() {
            return FetchResult::Deferred {
                reason,
                detail,
                attempts,
            };
        }
        match tally.last.take() {
            Some((reason, detail)) if tally.candidates > 0 => FetchResult::Failed {
                reason,
                detail,
                attempts,
            },
            Some((reason, detail)) => FetchResult::Failed {
                reason: if reason == ReasonCode::FailedOver {
                    ReasonCode::NoCandidates
                } else {
                    reason
                },
                detail,
                attempts,
            },
            None if attempts >= self.config.max_attempts => FetchResult::Failed {
                reason: ReasonCode::BudgetExhausted,
                detail: format!("{attempts} candidate downloads without a valid PDF"),
                attempts,
            },
            None if tally.candidates == 0 => FetchResult::Failed {
                reason: ReasonCode::NoCandidates,
                detail: "no resolver found a candidate URL".into(),
                attempts,
            },
            None => FetchResult::Failed {
                reason: ReasonCode::AllCandidatesFailed,
                detail: "every candidate was already tried in this run".into(),
                attempts,
            },
        }
    }

    async fn run_tiers(&self, work: &Work, env: FetchEnv<'_>, tally: &mut Tally) -> Option<(Downloaded, Candidate)> {
        let stem = file_stem(work);
        let final_path = env.out_dir.join(format!("{stem}.pdf"));
        for tier in &self.tiers {
            let mut resolving = futures_util::stream::iter(tier.resolvers.iter().cloned())
                .map(|r| async move { (r.name(), r.resolve(work, env.resolve).await) })
                .buffer_unordered(tier.parallel);
            let mut resolving_done = false;
            let mut queue: VecDeque<Candidate> = VecDeque::new();
            let mut downloads = FuturesUnordered::new();
            loop {
                while downloads.len() < self.config.max_concurrent && tally.attempts < self.config.max_attempts {
                    let Some(candidate) = queue.pop_front() else { break };
                    if !env.tried.insert(&candidate.url) {
                        continue;
                    }
                    tally.attempts += 1;
                    let key = format!("{stem}-{}", tally.attempts);
                    downloads.push(self.try_candidate(work, env, candidate, key));
                }
                if resolving_done && downloads.is_empty() {
                    break;
                }
                tokio::select! {
                    next = resolving.next(), if !resolving_done => match next {
                        None => resolving_done = true,
                        Some((_, Ok(found))) => {
                            tally.candidates += found.len() as u32;
                            queue.extend(found);
                        }
                        Some((name, Err(e))) => {
                            let (reason, _) = resolver_reason(&*e);
                            tally.failure(reason, format!("{name}: {e}"));
                        }
                    },
                    Some(done) = downloads.next(), if !downloads.is_empty() => match done {
                        Ok((staged, candidate)) => match staged.commit(&final_path).await {
                            Ok(file) => return Some((file, candidate)),
                            Err(f) => tally.failure(f.reason, f.detail),
                        },
                        Err((candidate, failure)) => {
                            if is_deferral(failure.reason) {
                                env.tried.remove(&candidate.url);
                            }
                            tally.failure(failure.reason, format!("{}: {}", candidate.url, failure.detail));
                        }
                    },
                }
            }
        }
        None
    }

    async fn try_candidate(
        &self,
        work: &Work,
        env: FetchEnv<'_>,
        candidate: Candidate,
        key: String,
    ) -> Result<(crate::download::Staged, Candidate), (Candidate, DownloadFailure)> {
        let mut tries = 0;
        loop {
            let request = match Request::get(candidate.url.as_str())
                .extension(OperationType::Download)
                .extension(WorkId::new(work.id.as_str()))
                .body(Full::default())
            {
                Ok(r) => r,
                Err(e) => {
                    let failure = DownloadFailure::from_error(Box::new(e), None);
                    let failure = DownloadFailure {
                        reason: ReasonCode::InvalidUrl,
                        ..failure
                    };
                    return Err((candidate, failure));
                }
            };
            match stage_pdf(env.download.clone(), request, env.out_dir, &key, env.options).await {
                Ok(staged) => return Ok((staged, candidate)),
                // A body cut or stalled after a good head: the layers cannot retry that, we do.
                Err(f)
                    if f.retryable && f.status.is_some_and(|s| s.is_success()) && tries < self.config.body_retries =>
                {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(250 << tries)).await;
                }
                Err(f) => return Err((candidate, f)),
            }
        }
    }
}

fn resolver_reason(err: &(dyn std::error::Error + 'static)) -> (ReasonCode, bool) {
    match classify_error(err) {
        (ReasonCode::Other, r) => (ReasonCode::ResolverError, r),
        other => other,
    }
}
