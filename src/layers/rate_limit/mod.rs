//! Per-partition rate limiting: keyed token buckets with run-time rates and a bounded wait.
//!
//! [`RateLimitLayer`] holds every request until its partition `(provider, host)` — see
//! [`PartitionKey`](crate::context::PartitionKey) — has a token in the shared
//! [`RateLimiter`]. Quotas (rate and burst) come from [`RateLimitConfig`], by rate key — a
//! `host:port`, a provider name or a host on any port, the most specific first — with a
//! default; the provider-learning layer changes them at run time with
//! [`RateLimiter::set_rate`]. Waiting is on a tokio timer, first come first served per
//! partition, and bounded: a slot further than [`RateLimitConfig::max_wait`] away fails
//! the request at once with [`RateLimitTimeout`](crate::error::RateLimitTimeout), so the
//! pipeline can defer or fail over instead of hanging.
//!
//! A global cap on requests in flight across stacks is tower's
//! [`GlobalConcurrencyLimitLayer`](tower::limit::GlobalConcurrencyLimitLayer) with one
//! semaphore, handed out by [`RateLimiter::global_concurrency_layer`]; put it *below*
//! [`RateLimitLayer`]. Waiting holds nothing: each request carries an unready clone of the
//! service below and polls it for readiness only after its wait, so it takes the global
//! permit when it is about to be sent, not while it sleeps for a slow partition.
//! [`RateLimitConfig::max_per_host`] caps the requests in flight to one host; a request
//! over it waits (before reserving a token) holding nothing either. With
//! [`RateLimitConfig::host_slot_with_response`], a response holds its host's slot while its
//! [`HostPermit`] extension lives: keep the response's parts while streaming its body, and
//! the whole download counts.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use contentdownload::context::{Provider, RateLimitWait};
//! use contentdownload::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer, RateLimiter};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), contentdownload::error::BoxError> {
//! let limiter = RateLimiter::new(RateLimitConfig {
//!     default: Quota::new(2.0, 1),
//!     max_in_flight: Some(64),
//!     max_per_host: Some(4),
//!     ..RateLimitConfig::default()
//! }.provider("crossref", Quota::new(50.0, 5)))?;
//!
//! let stack = ServiceBuilder::new()
//!     .layer(RateLimitLayer::new(limiter.clone()))
//!     .option_layer(limiter.global_concurrency_layer())
//!     .service(service_fn(|_req: http::Request<()>| async { Ok::<_, Infallible>(http::Response::new(())) }));
//!
//! let req = http::Request::get("https://api.crossref.org/works").extension(Provider::new("crossref")).body(())?;
//! let response = stack.oneshot(req).await?;
//! // a token was there: the attempt did not wait, and carries no `RateLimitWait`
//! assert_eq!(RateLimitWait::of(&response), std::time::Duration::ZERO);
//! assert_eq!(response.extensions().get::<RateLimitWait>(), None);
//! # Ok(()) }
//! ```
//!
//! # Why reserve slots (GCRA) rather than poll a bucket?
//!
//! A bucket that callers poll until a token appears lets whoever polls at the right moment
//! win, so a hot task can starve the others, and idle waiters cost wake-ups. Reserving the
//! next slot at call time (the generic cell rate algorithm) gives each request its exact
//! send time in call order: one timer per waiting request, no retries, fair per key.

mod bucket;
mod config;
pub mod future;
mod keys;
mod layer;
mod limiter;
mod service;
mod usage;

pub use self::bucket::Ticket;
pub use self::config::{Quota, RateLimitConfig, RateLimitConfigError, MIN_RATE};
pub use self::future::HostPermit;
pub use self::keys::{normalize_rate_key, KeyMatch, RateKeys, RateMatch};
pub use self::layer::RateLimitLayer;
pub use self::limiter::RateLimiter;
pub use self::service::RateLimit;
pub use self::usage::{KeyUsage, NAMED_PARTITIONS};
