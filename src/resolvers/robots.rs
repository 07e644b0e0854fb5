//! robots.txt (RFC 9309) for the pages we scrape: the landing-page resolver asks
//! [`RobotsTxt::check`] before it fetches a page.
//!
//! Only HTML pages we go looking for are gated: a PDF URL an API handed us (Unpaywall,
//! Crossref, OpenAlex, ...) is the provider's own answer and is fetched without asking, and
//! the APIs themselves are not crawled.
//!
//! - **Once per origin** (scheme, host, port), cached for the run. Concurrent checks of one
//!   origin share one fetch (a `tokio::sync::OnceCell` per origin).
//! - **Through the same stack** as the page, on the `Extract` operation and the page's
//!   [`Provider`], so the fetch is rate-limited, retried and recorded like any other.
//!   Redirects are followed by the client (its `max_redirects`, 10 by default; the RFC asks
//!   for at least 5). At most 500 KiB of the file is read ([`MAX_ROBOTS_BYTES`]); the rest
//!   is ignored, as the RFC allows.
//! - **The product token** is [`ROBOTS_AGENT`] (`contentdownload`, the first word of the
//!   User-Agent); a file with no group for it is read for `*`.
//! - **Statuses** (RFC 9309 §2.3.1): 2xx: the rules; 3xx left after redirects and 4xx
//!   (404 included): no rules, everything allowed; **429, 5xx, a network error or a file
//!   the parser rejects: everything disallowed on that origin for this run** (the RFC's
//!   "complete disallow" on a server error; a later run asks again). Our own politeness
//!   errors (the partition cooling down, the rate limiter's wait bound) are not the
//!   server's answer: they are returned and not cached, so the next check asks again.
//! - **`Crawl-delay: N`** (for our group, or `*`) caps the page's partition
//!   `(provider, host)` at one request per N seconds with no burst, through
//!   [`RateLimiter::cap_rate`]: the learner cannot raise it.
//!
//! # Why `texting_robots`
//!
//! Of the two parsers on crates.io that implement the Google/RFC matching rules
//! (longest match wins, `Allow` wins a tie, `*` and `$` patterns):
//! `texting_robots` 0.2.2 (2023) is tested against Google's and reppy's suites and real
//! files from millions of sites, is fuzzed, reads `Crawl-delay`, builds on our MSRV, and its
//! dependencies (`regex`, `nom`, `url`, `percent-encoding`, `anyhow`, `lazy_static`) are
//! already in our tree but for `bstr` 0.2 (with `regex-automata` 0.1) and `thiserror` 1. `robotstxt` 0.3.0 (2021, a port
//! of Google's C++ parser, no dependencies) has an open, unfixed panic on multi-byte
//! characters (Folyd/robotstxt#5: a server could crash a worker) and does not read
//! `Crawl-delay`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::OnceCell;
use tower::ServiceExt;

use super::{HttpService, PipelineBody};
use crate::context::{OperationType, PartitionKey, Provider};
use crate::error::BoxError;
use crate::layers::rate_limit::RateLimiter;
use crate::reason::{classify_error, ReasonCode};

/// The robots.txt product token of this crate's User-Agent.
pub const ROBOTS_AGENT: &str = "contentdownload";

/// The most of a robots.txt file read (500 KiB, RFC 9309 §2.5); the rest is ignored.
pub const MAX_ROBOTS_BYTES: usize = 500 * 1024;

/// A page refused by its site's robots.txt: not fetched (reason `robots_disallowed`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("robots.txt of {origin} does not allow {path}: {why}")]
pub struct RobotsDisallowed {
    /// The site: `scheme://host[:port]`.
    pub origin: String,
    /// The page's path (no query, which may hold a secret).
    pub path: String,
    /// Why: a rule, or the file could not be had (`robots.txt answered 503`).
    pub why: String,
}

/// What one origin's robots.txt says.
enum Rules {
    AllowAll,
    DisallowAll(String),
    Parsed(texting_robots::Robot),
}

struct HostRules {
    rules: Rules,
    /// Seconds between two requests (`Crawl-delay`), finite and positive.
    delay: Option<f64>,
}

impl HostRules {
    fn allow_all() -> Arc<HostRules> {
        Arc::new(HostRules {
            rules: Rules::AllowAll,
            delay: None,
        })
    }

    fn disallow_all(why: String) -> Arc<HostRules> {
        Arc::new(HostRules {
            rules: Rules::DisallowAll(why),
            delay: None,
        })
    }
}

type Cell = Arc<OnceCell<Arc<HostRules>>>;

/// The robots.txt of every origin asked about in a run, fetched once per origin. Cheap
/// to share behind an `Arc`; every clone of a [`ResolveContext`](super::ResolveContext)
/// shares one.
///
/// # Example
///
/// ```no_run
/// use contentdownload::context::Provider;
/// use contentdownload::resolvers::{HttpService, RobotsTxt};
///
/// # async fn demo(http: HttpService) -> Result<(), contentdownload::error::BoxError> {
/// let robots = RobotsTxt::new(None);
/// robots.check(&http, "https://journal.example/article/1", &Provider::new("landing")).await?;
/// # Ok(()) }
/// ```
pub struct RobotsTxt {
    limiter: Option<RateLimiter>,
    origins: Mutex<HashMap<String, Cell>>,
}

impl fmt::Debug for RobotsTxt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RobotsTxt")
            .field("origins", &self.lock().len())
            .finish_non_exhaustive()
    }
}

impl RobotsTxt {
    /// An empty cache. With a `limiter` (the stack's, [`Stack::limiter`](crate::service::Stack::limiter)),
    /// a `Crawl-delay` caps the checked page's partition.
    pub fn new(limiter: Option<RateLimiter>) -> RobotsTxt {
        RobotsTxt {
            limiter,
            origins: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cell>> {
        self.origins.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Ok(())` when `url` may be fetched by `provider`'s requests: its origin's robots.txt
    /// (fetched through `http` on first use) allows it. A refusal is a
    /// [`RobotsDisallowed`]; a URL that is not http(s) is let through (the fetch will refuse
    /// it); other errors are the robots.txt fetch's own when it was put off by our own
    /// politeness (nothing cached then).
    pub async fn check(&self, http: &HttpService, url: &str, provider: &Provider) -> Result<(), BoxError> {
        let Ok(parsed) = url::Url::parse(url) else {
            return Ok(());
        };
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Ok(());
        }
        let origin = parsed.origin().ascii_serialization();
        let cell = self.lock().entry(origin.clone()).or_default().clone();
        let rules = cell
            .get_or_try_init(|| fetch_rules(http.clone(), origin.clone(), provider.clone()))
            .await?
            .clone();
        if let (Some(delay), Some(limiter)) = (rules.delay, &self.limiter) {
            // the partition the page's request will have
            if let Ok(page) = Request::get(url).extension(provider.clone()).body(()) {
                limiter.cap_rate(&PartitionKey::compute(&page), 1.0 / delay);
            }
        }
        let refused = |why: String| -> BoxError {
            Box::new(RobotsDisallowed {
                origin: origin.clone(),
                path: parsed.path().to_owned(),
                why,
            })
        };
        match &rules.rules {
            Rules::AllowAll => Ok(()),
            Rules::DisallowAll(why) => Err(refused(why.clone())),
            Rules::Parsed(robot) if robot.allowed(parsed.as_str()) => Ok(()),
            Rules::Parsed(_) => Err(refused(format!("disallowed for {ROBOTS_AGENT}"))),
        }
    }

    /// How many origins were asked about (fetched, or being fetched).
    pub fn origins(&self) -> usize {
        self.lock().len()
    }
}

/// Fetches and reads one origin's robots.txt; see the module docs for what each answer means.
fn fetch_rules(
    http: HttpService,
    origin: String,
    provider: Provider,
) -> BoxFuture<'static, Result<Arc<HostRules>, BoxError>> {
    async move {
        let request = format!("{origin}/robots.txt")
            .parse::<Uri>()
            .map_err(|e| Box::new(e) as BoxError)
            .and_then(|uri| {
                Request::get(uri)
                    .header(http::header::ACCEPT, "text/plain, */*;q=0.5")
                    .extension(OperationType::Extract)
                    .extension(provider)
                    .body(Full::default())
                    .map_err(|e| Box::new(e) as BoxError)
            });
        let response = match request {
            Ok(request) => http.oneshot(request).await,
            Err(e) => Err(e),
        };
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                return match classify_error(&*e) {
                    // our own politeness put it off: not the site's answer, not cached
                    (
                        ReasonCode::Deferred
                        | ReasonCode::FailedOver
                        | ReasonCode::CoolingDown
                        | ReasonCode::RateLimited,
                        _,
                    ) => Err(e),
                    // the site could not be reached (DNS, refused, timed out, reset): its
                    // pages are not fetched either way (RFC 9309 says assume a complete
                    // disallow), but the work fails with that cause, which a later run may
                    // not meet, rather than a `robots_disallowed` that hides it; not cached
                    (_, true) => Err(e),
                    _ => Ok(unavailable(&origin, format!("robots.txt could not be fetched: {e}"))),
                };
            }
        };
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            return Ok(unavailable(&origin, format!("robots.txt answered {status}")));
        }
        if !status.is_success() {
            // 4xx (404 included) and a 3xx left over: "unavailable", no restriction
            return Ok(HostRules::allow_all());
        }
        let body = match read_capped(response.into_body(), MAX_ROBOTS_BYTES).await {
            Ok(b) => b,
            Err(e) => return Ok(unavailable(&origin, format!("robots.txt could not be read: {e}"))),
        };
        match texting_robots::Robot::new(ROBOTS_AGENT, &body) {
            Ok(robot) => {
                let delay = robot.delay.map(f64::from).filter(|d| d.is_finite() && *d > 0.0);
                Ok(Arc::new(HostRules {
                    rules: Rules::Parsed(robot),
                    delay,
                }))
            }
            Err(e) => Ok(unavailable(&origin, format!("robots.txt could not be parsed: {e}"))),
        }
    }
    .boxed()
}

fn unavailable(origin: &str, why: String) -> Arc<HostRules> {
    tracing::warn!(%origin, %why, "robots.txt unavailable: the site's pages are not fetched in this run");
    HostRules::disallow_all(why)
}

/// Up to `limit` bytes of the body; what comes after is not read.
fn read_capped(mut body: PipelineBody, limit: usize) -> BoxFuture<'static, Result<Bytes, BoxError>> {
    async move {
        let mut out = BytesMut::new();
        while out.len() < limit {
            let Some(frame) = body.frame().await else { break };
            if let Ok(data) = frame?.into_data() {
                let take = data.len().min(limit - out.len());
                out.extend_from_slice(&data[..take]);
            }
        }
        Ok(out.freeze())
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_group_then_star() {
        let txt = b"User-agent: *\nDisallow: /\n\nUser-agent: contentdownload\nDisallow: /private\nAllow: /private/open\nCrawl-delay: 2\n";
        let r = texting_robots::Robot::new(ROBOTS_AGENT, txt).unwrap();
        assert!(r.allowed("https://x.org/article/1"));
        assert!(!r.allowed("https://x.org/private/a"));
        assert!(r.allowed("https://x.org/private/open/a"));
        assert_eq!(r.delay, Some(2.0));
        let star = texting_robots::Robot::new(ROBOTS_AGENT, b"User-agent: *\nDisallow: /doi/\n").unwrap();
        assert!(!star.allowed("https://x.org/doi/10.1/x"));
        assert!(star.allowed("https://x.org/other"));
    }

    #[test]
    fn odd_bytes_do_not_panic() {
        for txt in [
            &b"\xff\xfe\x00User-agent: contentdownload\nDisallow: /\xc3"[..],
            b"Disallow: /\xe2\x82\nAllow: /a$*?[(\nCrawl-delay: -1e309",
            b"",
        ] {
            if let Ok(r) = texting_robots::Robot::new(ROBOTS_AGENT, txt) {
                let _ = r.allowed("https://x.org/\u{a0}/a?b");
            }
        }
    }
}
