//! Provider learning: each partition's rate follows what the provider's responses say.
//!
//! [`ProviderLearningLayer`] shows every attempt's response to a shared [`Learner`], which
//! moves the partition's rate in the [`RateLimiter`](crate::layers::rate_limit::RateLimiter)
//! by a [`LearningPolicy`]:
//! - [`LearningPolicy::Adaptive`] (default): on a 429 (or a 503 with Retry-After) the rate
//!   drops to 0.7× (to 0.49× when a throttle with Retry-After comes before the rate ran
//!   for a second: the first throttle, or one right after a decrease) — once per round trip and per `Retry-After`
//!   period (at most 250 ms), not once per in-flight request — and the rate it was
//!   throttled at is remembered as the ceiling (0.7× it after such an early drop; 0.9× it,
//!   but no less than the requests the provider accepted in the second before, when it is
//!   below the ceiling remembered). The `Retry-After` wait holds the whole
//!   partition in the limiter, the requests already queued there included. On success it climbs back along a cubic curve that flattens at 0.97× that
//!   ceiling and stays there; it probes above only after a hold that doubles each time the
//!   same ceiling is confirmed (8 s, 16 s, at most 16 s), and climbs on when a probe meets
//!   no 429 (the limit rose), doubling each second once past 1.5× the old ceiling. Never
//!   below a floor (0.5 req/s by default).
//! - [`LearningPolicy::Progressive`]: the seed design's table (see its docs).
//!
//! The ceiling is the configured rate, or the provider's advertised one
//! (`X-Rate-Limit-Limit` + `X-Rate-Limit-Interval`, `RateLimit-Policy`, `X-RateLimit-*`);
//! a spent quota (`remaining` 0) holds the partition until its reset.
//! [`Learner::status`] and [`Learner::statuses`] report each partition (normal, reducing,
//! recovering, with its numbers), and the state can be saved to a versioned JSON file
//! ([`Learner::with_persistence`], [`Learner::persist`], [`Learner::spawn_persist_task`]).
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use contentdownload::context::Provider;
//! use contentdownload::layers::learning::{Learner, LearningPolicy, ProviderLearningLayer};
//! use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), contentdownload::error::BoxError> {
//! let limiter = RateLimiter::new(RateLimitConfig::default().provider("crossref", Quota::new(50.0, 5)))?;
//! let learner = Learner::new(limiter.clone(), LearningPolicy::default())?;
//!
//! // learning sits directly above the rate limit it drives
//! let stack = ServiceBuilder::new()
//!     .layer(ProviderLearningLayer::new(learner.clone()))
//!     .layer(RateLimitLayer::new(limiter))
//!     .service(service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, Infallible>(http::Response::builder().status(429).body(()).unwrap())
//!     }));
//!
//! let req = http::Request::get("https://api.crossref.org/works").extension(Provider::new("crossref")).body(())?;
//! stack.oneshot(req).await?;
//! let status = learner.status("crossref", "api.crossref.org").expect("one response seen");
//! assert_eq!(status.rate, 35.0);
//! println!("{status}");
//! # Ok(()) }
//! ```
//!
//! # Why cubic recovery and not the seed's table?
//!
//! The seed design only ever lowered a rate, so one bad minute slowed a whole run. A
//! multiplicative decrease with cubic recovery finds a hidden limit in a few cycles. Plain
//! CUBIC then probes past the last throttled rate every few seconds, and against a limiter
//! that answers 429 + `Retry-After: 1` each probe costs a second of cool-down; so the
//! curve stops just under the remembered ceiling and the probes thin out as the ceiling is
//! confirmed (as CUBIC's `W_max` plus an exponential backoff of probes). The longest hold
//! bounds how long a raised limit goes unnoticed. Measured against nginx `limit_req` and
//! HAProxy on loopback by `examples/politeness_bench.rs`.
//!
//! # Why the descent aims low, and what is measured
//!
//! Against a server that answers 429 + `Retry-After: 1`, every step down costs a second
//! of silence, so a client told 5× the limit must get under it in as few steps as
//! possible and then not overshoot on the way back up. A throttle that comes within a
//! second of a rate's start says the rate is far above the limit, so the rate drops by
//! β² and the curve climbs back only to β × the throttled rate (the limit is nearer the
//! new rate than the old one): with the told rate at 5×, the descent is over in 3–4
//! pauses and the rate settles near the limit instead of meeting it again on the way up.
//! That ceiling is a guess, so the first probe above it comes after half the usual hold.
//! Once the rate has run for a second, the provider's acceptance is measured instead: the
//! requests it accepted in the second before a throttle are a floor for the new ceiling
//! (a window limiter such as HAProxy's `http_req_rate` accepts exactly its limit), in
//! place of CUBIC's fixed 0.9× fast convergence.

mod advertised;
pub mod future;
mod layer;
mod learner;
mod persist;
mod policy;
mod service;
mod state;

pub use self::layer::ProviderLearningLayer;

/// Response extension set by [`ProviderLearning`] when a response changed its partition's
/// learned rate (a 429 lowered it, a recovery step raised it): the rate afterwards, in
/// requests per second. Absent when the rate stayed as it was; the current rate of any
/// partition is [`Learner::rate`], and the attempt span's `contentdownload.learning.rate`
/// carries it after every response.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LearnedRate(pub f64);
pub use self::learner::{in_words, InspectError, Learner, QuotaPause};
pub use self::persist::{LearningFileError, PersistError, PersistTask, FORMAT_VERSION};
pub use self::policy::{
    progressive_step, AdaptiveConfig, LearningConfigError, LearningPolicy, PROGRESSIVE_MAX_REDUCTION,
    PROGRESSIVE_MIN_RATE,
};
pub use self::service::ProviderLearning;
pub use self::state::{PartitionStatus, Phase, MAX_RECOVERY_TIMES};
