//! Retry-After honouring: parse providers' wait hints and keep a per-partition cool-down.
//!
//! [`RetryAfterLayer`] reads `Retry-After` (delta-seconds or an HTTP-date in any of the
//! three RFC 9110 forms), the IETF `RateLimit` field's `t=` and `X-RateLimit-Reset` from
//! every response, caps the delay at 900 s, and attaches it as a
//! [`RetryAfterHint`](crate::context::RetryAfterHint) response extension for the retry
//! policy, the learner and telemetry. Garbage, negative, past or absurd (over a year)
//! values give no hint.
//!
//! After a 429 or 503 that carries a hint, the request's partition
//! ([`PartitionKey`](crate::context::PartitionKey): provider and host) cools down: every
//! later request to it, from any clone of the service, waits until the hint expires, and is
//! then sent; its response carries a [`CooldownWait`](crate::context::CooldownWait) saying
//! how long it waited. A wait longer than the maximum (default 5 s) is not taken: the
//! request fails at once with [`CoolingDown`](crate::error::CoolingDown), which says when
//! the pause ends, so the caller can defer the work or fail over to another provider.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use contentdownload::context::RetryAfterHint;
//! use contentdownload::layers::retry_after::RetryAfterLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), contentdownload::error::BoxError> {
//! let layer = RetryAfterLayer::new().max_wait(Duration::from_secs(5));
//! let svc = ServiceBuilder::new().layer(layer.clone()).service(service_fn(|_req: http::Request<()>| async {
//!     let res = http::Response::builder().status(429).header("retry-after", "2").body(())?;
//!     Ok::<_, http::Error>(res)
//! }));
//! let res = svc.oneshot(http::Request::get("https://api.crossref.org/works").body(())?).await?;
//! assert_eq!(res.extensions().get::<RetryAfterHint>().map(|h| h.delay), Some(Duration::from_secs(2)));
//! // api.crossref.org now cools down for 2 s; clones of the layer see it
//! assert_eq!(layer.cooldowns().active().len(), 1);
//! # Ok(()) }
//! ```
//!
//! # Why fail fast past a maximum wait?
//!
//! A provider that asks for a 10-minute pause would otherwise park every worker on it for
//! 10 minutes. Failing with a typed error lets the pipeline defer the work or try another
//! resolver, and the retry layer (above this one) treats it like a 429 with that hint.

pub mod future;
mod layer;
mod parse;
mod service;
mod state;
#[cfg(test)]
mod tests;

pub use self::layer::{RetryAfterLayer, DEFAULT_MAX_WAIT};
pub use self::parse::{hint_from_headers, parse_rate_limit_field, parse_rate_limit_reset, parse_retry_after, MAX_HINT};
pub use self::service::RetryAfter;
pub use self::state::Cooldowns;
