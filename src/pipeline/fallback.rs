//! The per-work fallback: ask the tiers' resolvers, download their candidates, keep the
//! best valid PDF.
//!
//! # Which PDF wins
//!
//! The tiers are tried in order: a valid PDF from an earlier tier ends the work, and a later
//! tier is not asked. Within a tier, the resolvers are asked `parallel` at a time and their
//! candidates downloaded `max_concurrent` at a time, so several may give a valid PDF; the
//! winner is the best ranked, whatever finished first:
//! 1. the publisher's version ([`PUBLISHER_SOURCES`](super::PUBLISHER_SOURCES): Crossref's
//!    links, the landing page's PDF, DOAJ's full text) over a repository, preprint, index or
//!    archive copy;
//! 2. then the resolver's place in the tier;
//! 3. then the candidate's place in its resolver's answer.
//!
//! A valid PDF waits (staged, not yet in place) for the better-ranked candidates still
//! pending, for at most [`WAIT_FOR_BETTER`](super::WAIT_FOR_BETTER) (10 s); the losers'
//! files are deleted.
//!
//! # Answers remembered
//!
//! Each resolver's answer (not its errors) is remembered in the ledger for
//! [`resolver_cache_ttl_secs`](FallbackConfig::resolver_cache_ttl_secs) (see
//! [`Fallback::with_ledger`]); within that age a rerun, or the second pass, takes it from
//! there and sends no request.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use http::Request;
use http_body_util::Full;
use tokio::time::Instant;

use super::answers::{Answers, Given, Recalled};
use super::choice::{Choice, WAIT_FOR_BETTER};
use super::config::FallbackConfig;
use crate::context::{OperationType, PartitionKey, WorkId};
use crate::download::{file_stem, stage_pdf, DownloadFailure, DownloadOptions, Downloaded};
use crate::error::BoxError;
use crate::layers::telemetry::redacted;
use crate::ledger::Ledger;
use crate::manifest::ResolverCounts;
use crate::reason::{classify_error, retry_hint, ReasonCode};
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
        /// The sources that put it off, each with when it expects us back if it said.
        by: Vec<DeferredBy>,
    },
    /// No valid PDF.
    Failed {
        /// Why: the most informative reason of every source tried
        /// ([`ReasonCode::informativeness`]), not merely the last.
        reason: ReasonCode,
        /// In words.
        detail: String,
        /// Candidate downloads started.
        attempts: u32,
        /// The HTTP status behind the reason, when it is [`ReasonCode::HttpStatus`].
        status: Option<u16>,
    },
}

/// A source that put a work off, and when it expects us back (its Retry-After, a
/// cool-down's end, a rate-limit wait), if it said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeferredBy {
    /// Who: the refused URL's `host[:port]` (lower-case, as in a
    /// [`PartitionKey`](crate::context::PartitionKey)), or `resolver <name>`.
    pub source: String,
    /// When it expects us back, if it said.
    pub retry_at: Option<Instant>,
}

impl DeferredBy {
    /// The `host[:port]` of `url` (lower-case), or `url` itself if it has none.
    pub fn host_of(url: &str) -> String {
        match url.parse::<http::Uri>() {
            Ok(uri) => match (uri.host(), uri.port_u16()) {
                (Some(h), Some(p)) => format!("{}:{p}", h.to_ascii_lowercase()),
                (Some(h), None) => h.to_ascii_lowercase(),
                _ => url.to_owned(),
            },
            Err(_) => url.to_owned(),
        }
    }
}

struct Tier {
    resolvers: Vec<Arc<dyn Resolver>>,
    parallel: usize,
}

/// The fallback engine built from a [`FallbackConfig`].
pub struct Fallback {
    tiers: Vec<Tier>,
    config: FallbackConfig,
    /// Resolver answers remembered in the ledger, and this run's counts.
    answers: Answers,
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
        ReasonCode::Deferred
            | ReasonCode::CoolingDown
            | ReasonCode::RateLimited
            | ReasonCode::Throttled
            | ReasonCode::QuotaSpent
    )
}

#[derive(Default)]
struct Tally {
    attempts: u32,
    candidates: u32,
    deferred: Option<(ReasonCode, String)>,
    /// Who put the work off, for the second pass.
    by: Vec<DeferredBy>,
    /// The most informative failure so far, with its HTTP status.
    best: Option<(ReasonCode, String, Option<u16>)>,
    /// The resolvers' answers (not their errors), to remember.
    given: Vec<Given>,
}

impl Tally {
    /// Records a failure; `by` says who, when it is a deferral. Of the other failures the
    /// most informative is kept ([`ReasonCode::informativeness`]; the first of equal rank):
    /// a publisher's 404 or HTML page is not hidden by a later fallback's connect error.
    fn failure(&mut self, reason: ReasonCode, detail: String, by: Option<DeferredBy>) {
        self.failure_with_status(reason, None, detail, by);
    }

    fn failure_with_status(&mut self, reason: ReasonCode, status: Option<u16>, detail: String, by: Option<DeferredBy>) {
        if is_deferral(reason) {
            self.deferred = Some((reason, detail));
            self.by.extend(by);
        } else if self
            .best
            .as_ref()
            .is_none_or(|(kept, _, _)| reason.informativeness() > kept.informativeness())
        {
            self.best = Some((reason, detail, status));
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
        Ok(Fallback {
            tiers,
            answers: Answers::default(),
            config,
        })
    }

    /// Remembers resolver answers in `ledger` for
    /// [`resolver_cache_ttl_secs`](FallbackConfig::resolver_cache_ttl_secs), and takes them
    /// from there within that age instead of asking again (see the module docs).
    pub fn with_ledger(mut self, ledger: Option<Ledger>) -> Self {
        self.answers = Answers::new(ledger, Duration::from_secs(self.config.resolver_cache_ttl_secs));
        self
    }

    /// Reads ahead the remembered answers of `works`, the next of the input, in one query
    /// (none when no tier has a resolver whose answers are kept).
    pub(super) async fn read_answers_ahead(&self, works: &[Work]) {
        // only the works that some resolver whose answers are kept applies to
        let asked: Vec<&str> = works
            .iter()
            .filter(|w| {
                self.tiers.iter().any(|t| {
                    t.resolvers
                        .iter()
                        .any(|r| Answers::kept_for(r.name()) && r.applies_to(w))
                })
            })
            .map(|w| w.id.as_str())
            .collect();
        if !asked.is_empty() {
            self.answers.read_ahead(&asked).await;
        }
    }

    /// Drops the answers read ahead for `work`, which will not be fetched in this pass.
    pub(super) fn forget_answers(&self, work: &Work) {
        self.answers.forget(work);
    }

    /// Writes the resolver answers still waiting to be remembered (they are written in
    /// groups): before a second pass, which reads them, and at the end of a run.
    pub(super) async fn flush_answers(&self) {
        self.answers.flush().await;
    }

    /// Per resolver, the works asked about and the answers taken from memory since the last
    /// call (the PDFs are counted from the works' records by the summary), leaving zero.
    pub fn take_resolver_counts(&self) -> BTreeMap<String, ResolverCounts> {
        self.answers.take_counts()
    }

    /// Finds and downloads a valid PDF for `work` within its budgets.
    pub async fn fetch(&self, work: &Work, env: FetchEnv<'_>) -> FetchResult {
        let deadline = Instant::now() + Duration::from_millis(self.config.total_timeout_ms);
        let mut tally = Tally::default();
        // read when the first tier that asks someone comes up (see `run_tiers`)
        let mut recalled = None;
        let outcome = tokio::time::timeout_at(deadline, self.run_tiers(work, env, &mut tally, &mut recalled)).await;
        let winner = match &outcome {
            Ok(Some((_, candidate))) => Some(candidate.resolver.as_str()),
            _ => None,
        };
        if recalled.is_none() {
            self.answers.forget(work);
        }
        self.answers
            .remember(work, std::mem::take(&mut tally.given), winner)
            .await;
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
                    status: None,
                }
            }
        }
        // Something was put off: even if other sources failed, the second pass may succeed.
        if let Some((reason, detail)) = tally.deferred.take() {
            return FetchResult::Deferred {
                reason,
                detail,
                attempts,
                by: std::mem::take(&mut tally.by),
            };
        }
        match tally.best.take() {
            Some((reason, detail, status)) if tally.candidates > 0 => FetchResult::Failed {
                reason,
                detail,
                attempts,
                status,
            },
            Some((reason, detail, status)) => FetchResult::Failed {
                reason: if reason == ReasonCode::FailedOver {
                    ReasonCode::NoCandidates
                } else {
                    reason
                },
                detail,
                attempts,
                status,
            },
            None if attempts >= self.config.max_attempts => FetchResult::Failed {
                reason: ReasonCode::BudgetExhausted,
                detail: format!("{attempts} candidate downloads without a valid PDF"),
                attempts,
                status: None,
            },
            None if tally.candidates == 0 => FetchResult::Failed {
                reason: ReasonCode::NoCandidates,
                detail: "no resolver found a candidate URL".into(),
                attempts,
                status: None,
            },
            None => FetchResult::Failed {
                reason: ReasonCode::AllCandidatesFailed,
                detail: "every candidate was already tried in this run".into(),
                attempts,
                status: None,
            },
        }
    }

    async fn run_tiers(
        &self,
        work: &Work,
        env: FetchEnv<'_>,
        tally: &mut Tally,
        recalled: &mut Option<HashMap<String, Recalled>>,
    ) -> Option<(Downloaded, Candidate)> {
        let stem = file_stem(work);
        let final_path = env.out_dir.join(format!("{stem}.pdf"));
        for tier in &self.tiers {
            // only the resolvers the work gives something to go on (a DOI, ...): the others
            // are not asked, counted or remembered
            let resolvers: Vec<&Arc<dyn Resolver>> = tier.resolvers.iter().filter(|r| r.applies_to(work)).collect();
            if resolvers.is_empty() {
                continue;
            }
            // the work's remembered answers, read once, before the first resolver whose
            // answers are kept: a tier of record readers only (the bulk case, whose PDF the
            // first tier finds) reads nothing
            if recalled.is_none() && resolvers.iter().any(|r| Answers::kept_for(r.name())) {
                *recalled = Some(self.answers.recall(work).await);
            }
            let mut nothing = HashMap::new();
            let known = recalled.as_mut().unwrap_or(&mut nothing);
            // the (lazy) futures made up front: a closure in the stream's type would trip the
            // compiler's proof that the fetch is `Send` (rust-lang/rust#102211)
            let asks: Vec<_> = resolvers
                .iter()
                .map(|r| resolve_with((*r).clone(), work, env.resolve, known.remove(r.name())))
                .collect();
            let mut resolving = futures_util::stream::iter(asks).buffer_unordered(tier.parallel);
            let mut resolving_done = false;
            let mut choice = Choice::new(resolvers.iter().map(|r| r.name()).collect());
            let mut downloads = FuturesUnordered::new();
            // when the PDF in hand stops waiting for better-ranked candidates
            let mut patience: Option<Instant> = None;
            loop {
                while downloads.len() < self.config.max_concurrent && tally.attempts < self.config.max_attempts {
                    let Some((rank, candidate)) = choice.next() else { break };
                    if !env.tried.insert(&candidate.url) {
                        choice.ended(rank);
                        continue;
                    }
                    tally.attempts += 1;
                    let key = format!("{stem}-{}", tally.attempts);
                    downloads.push(self.try_candidate(work, env, candidate, key).map(move |r| (rank, r)));
                }
                // the best valid PDF, once no better-ranked candidate is still pending
                // (queued candidates count only while the attempt budget lets them start)
                let live = tally.attempts < self.config.max_attempts;
                while let Some((staged, candidate)) = choice.winner(live) {
                    match staged.commit(&final_path).await {
                        Ok(file) => return Some((file, candidate)),
                        Err(f) => tally.failure_with_status(f.reason, f.status.map(|s| s.as_u16()), f.detail, None),
                    }
                }
                if choice.has_staged() {
                    patience.get_or_insert_with(|| Instant::now() + WAIT_FOR_BETTER);
                }
                if resolving_done && downloads.is_empty() {
                    // nothing pending: the staged PDFs, best first
                    while let Some((staged, candidate)) = choice.winner(false) {
                        match staged.commit(&final_path).await {
                            Ok(file) => return Some((file, candidate)),
                            Err(f) => tally.failure_with_status(f.reason, f.status.map(|s| s.as_u16()), f.detail, None),
                        }
                    }
                    break;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(patience.unwrap_or_else(Instant::now)), if patience.is_some() => {
                        // waited long enough for better-ranked candidates: the best in hand
                        patience = None;
                        while let Some((staged, candidate)) = choice.best_now() {
                            match staged.commit(&final_path).await {
                                Ok(file) => return Some((file, candidate)),
                                Err(f) => tally.failure_with_status(f.reason, f.status.map(|s| s.as_u16()), f.detail, None),
                            }
                        }
                    }
                    next = resolving.next(), if !resolving_done => match next {
                        None => resolving_done = true,
                        Some((name, recalled_at, Ok(found))) => {
                            self.answers.count(name, recalled_at.is_some());
                            tally.candidates += found.len() as u32;
                            tally.given.push(Given { resolver: name, candidates: found.clone(), recalled_at });
                            choice.answered(name, found);
                        }
                        Some((name, _, Err(e))) => {
                            // a provider paused for its spent allowance was not asked
                            let unsent = e.downcast_ref::<crate::error::QuotaSpent>().is_some_and(|q| !q.sent);
                            if !unsent {
                                self.answers.count(name, false);
                            }
                            choice.answered(name, Vec::new());
                            let (reason, _) = resolver_reason(&*e);
                            let (host, retry_at) = retry_hint(&*e, Instant::now());
                            let source = host.unwrap_or_else(|| format!("resolver {name}"));
                            tally.failure(reason, format!("{name}: {e}"), Some(DeferredBy { source, retry_at }));
                        }
                    },
                    Some((rank, done)) = downloads.next(), if !downloads.is_empty() => match done {
                        Ok((staged, candidate)) => {
                            choice.ended(rank);
                            choice.stage(rank, staged, candidate);
                        }
                        Err((candidate, failure)) => {
                            choice.ended(rank);
                            if is_deferral(failure.reason) {
                                env.tried.remove(&candidate.url);
                            }
                            let by = DeferredBy {
                                source: DeferredBy::host_of(&candidate.url),
                                retry_at: failure.retry_after.and_then(|d| Instant::now().checked_add(d)),
                            };
                            // the URL as the manifest and the logs may show it: no userinfo, no secrets
                            tally.failure_with_status(
                                failure.reason,
                                failure.status.map(|s| s.as_u16()),
                                format!("{}: {}", redacted(&candidate.url), failure.detail),
                                Some(by),
                            );
                        }
                    },
                }
            }
        }
        None
    }

    /// Downloads one candidate. A failure carries how long its provider asked us to wait,
    /// when it said ([`DownloadFailure::retry_after`]).
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
            // a host whose allowance is spent is not asked (nor waited for) until its reset
            let partition = PartitionKey::compute(&request);
            let spent = |sent: bool| {
                let spent = env.resolve.learner.as_ref()?.quota_spent(&partition, sent)?;
                Some(DownloadFailure::from_error(Box::new(spent), None))
            };
            if let Some(failure) = spent(false) {
                return Err((candidate, failure));
            }
            match stage_pdf(env.download.clone(), request, env.out_dir, &key, env.options).await {
                Ok(staged) => return Ok((staged, candidate)),
                // the 429 that spent it, or a wait the pause caused, says so
                Err(f) if is_deferral(f.reason) || f.status == Some(http::StatusCode::TOO_MANY_REQUESTS) => {
                    let sent = f.status.is_some();
                    return Err((candidate, spent(sent).unwrap_or(f)));
                }
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

/// One resolver's answer, named, with the time it was first given when it comes from the
/// ledger's memory (`recalled`: no request is made). A function with a boxed future rather
/// than an `async` closure: the closure's future, borrowing the work, trips the compiler's
/// proof that the whole fetch is `Send` (rust-lang/rust#102211), which spawning each work as
/// a task needs.
type Answer = (&'static str, Option<i64>, Result<Vec<Candidate>, BoxError>);

fn resolve_with<'a>(
    r: Arc<dyn Resolver>,
    work: &'a Work,
    cx: &'a ResolveContext,
    recalled: Option<Recalled>,
) -> futures_util::future::BoxFuture<'a, Answer> {
    Box::pin(async move {
        match recalled {
            Some(known) => (r.name(), Some(known.answered_at.unwrap_or(0)), Ok(known.candidates)),
            None => (r.name(), None, r.resolve(work, cx).await),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deferrals_are_kept_with_their_source() {
        assert_eq!(DeferredBy::host_of("http://127.0.0.1:8080/a.pdf"), "127.0.0.1:8080");
        assert_eq!(DeferredBy::host_of("https://ArXiv.org/pdf/1"), "arxiv.org");
        let by = |s: &str| DeferredBy {
            source: s.into(),
            retry_at: None,
        };
        let mut t = Tally::default();
        t.failure(ReasonCode::Throttled, "a".into(), Some(by("a")));
        t.failure(ReasonCode::HttpStatus, "b".into(), Some(by("b")));
        t.failure(ReasonCode::CoolingDown, "c".into(), Some(by("c")));
        assert_eq!(t.by, [by("a"), by("c")], "only deferrals");
        assert_eq!(t.deferred.as_ref().map(|d| d.1.as_str()), Some("c"));
    }

    #[test]
    fn the_most_informative_failure_is_kept() {
        // (failures in the order they came, the reason kept)
        let cases: &[(&[ReasonCode], ReasonCode)] = &[
            (
                &[ReasonCode::HttpStatus, ReasonCode::ConnectError],
                ReasonCode::HttpStatus,
            ),
            (
                &[ReasonCode::HtmlLandingPage, ReasonCode::ConnectError],
                ReasonCode::HtmlLandingPage,
            ),
            (&[ReasonCode::ConnectError, ReasonCode::NotPdf], ReasonCode::NotPdf),
            (
                &[ReasonCode::HttpStatus, ReasonCode::IoError, ReasonCode::ConnectError],
                ReasonCode::IoError,
            ),
            (
                &[ReasonCode::FailedOver, ReasonCode::ConnectError],
                ReasonCode::ConnectError,
            ),
            (
                &[ReasonCode::ConnectError, ReasonCode::FailedOver],
                ReasonCode::ConnectError,
            ),
            (&[ReasonCode::Timeout, ReasonCode::HttpStatus], ReasonCode::HttpStatus),
            (
                &[ReasonCode::ResolverError, ReasonCode::Truncated],
                ReasonCode::Truncated,
            ),
        ];
        for (seen, kept) in cases {
            let mut t = Tally::default();
            for r in *seen {
                t.failure(*r, r.to_string(), None);
            }
            assert_eq!(t.best.as_ref().map(|b| b.0), Some(*kept), "{seen:?}");
        }
        // of equal rank the first stays (the earlier tier, the publisher)
        let mut t = Tally::default();
        t.failure_with_status(ReasonCode::HttpStatus, Some(404), "publisher".into(), None);
        t.failure_with_status(ReasonCode::HttpStatus, Some(503), "archive".into(), None);
        assert_eq!(t.best, Some((ReasonCode::HttpStatus, "publisher".into(), Some(404))));
    }
}
