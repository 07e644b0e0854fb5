//! Contextual retry: a retry policy per [`OperationType`](crate::context::OperationType),
//! with backoff, server hints, a per-partition budget, and typed Defer / Failover outcomes.
//!
//! [`ContextualRetryLayer`] reads the operation type from each request's extensions and
//! applies that operation's [`OperationPolicy`]. After each attempt the policy decides one
//! of [`Decision::Retry`] (after a delay), [`Decision::Defer`], [`Decision::Failover`],
//! [`Decision::Fail`] or [`Decision::Done`], and records it as
//! `contentdownload.retry.decision` on the current span. The default table:
//!
//! | operation | 429 | timeout | 5xx, connect error, reset | gives up with |
//! | --- | --- | --- | --- | --- |
//! | `Download` | retry | retry | retry (6 attempts, 60 s) | the last response / error |
//! | `Validate` | defer | defer | retry (3 attempts, 20 s) | `Deferred` |
//! | `ManifestFetch` | defer | defer | retry (5 attempts, 60 s) | `Deferred` |
//! | `Resolve` | fail over | retry (3 attempts, 30 s) | retry | `FailedOver` |
//! | `Extract` (standard) | retry | retry | retry (4 attempts, 30 s) | the last response / error |
//!
//! Other 4xx fail fast; a 409 is retried only when the request carries an Idempotency-Key
//! (the server is still processing the original). Backoff is exponential, 200 ms doubling
//! to 4 s, with jitter; a server hint (the [`RetryAfterHint`](crate::context::RetryAfterHint)
//! set by the [Retry-After layer](crate::layers::retry_after), or the response's own
//! headers) replaces it. If the wait would end past the operation's deadline the layer does
//! not sleep: it gives up at once. Every attempt carries an
//! [`AttemptNumber`](crate::context::AttemptNumber) (1-based).
//!
//! What is retried, and what is not:
//! - Errors are classified by walking their source chain: connect errors (hyper-util's
//!   `is_connect()`), timeouts (connect, [`ReadTimeout`](crate::service::ReadTimeout),
//!   tower's `Elapsed`), connection resets, hyper's incomplete-message / canceled errors,
//!   and our own [`CoolingDown`](crate::error::CoolingDown) and
//!   [`RateLimitTimeout`](crate::error::RateLimitTimeout) (treated as a 429 whose hint is
//!   the wait they name). Anything else is returned as it is.
//! - Methods that are not idempotent (POST, PATCH, ...) are resent only when the request
//!   carries an `Idempotency-Key` header or an [`IdempotencyKey`](crate::context::IdempotencyKey)
//!   extension; GET, HEAD, OPTIONS, TRACE, PUT and DELETE are idempotent (RFC 9110 §9.2.2).
//! - A request is resent from a copy kept before the first attempt; its body must be
//!   [`CloneBody`]. A body that cannot be cloned (a stream) is sent once.
//!
//! With contextual retry switched off ([`ContextualRetryLayer::standard`] or
//! `contextual = false` in [`RetryConfig`]), every operation gets
//! [`OperationPolicy::standard`].
//!
//! # Matching on Defer and Failover
//!
//! The layer's error is a [`BoxError`](crate::error::BoxError). A `Defer` decision is a
//! [`Deferred`](crate::error::Deferred) inside it, a `Failover` a
//! [`FailedOver`](crate::error::FailedOver); both carry the operation, the last status, the
//! server's hint and the number of attempts. Downcast to tell them from real failures:
//!
//! ```
//! use contentdownload::context::OperationType;
//! use contentdownload::error::{Deferred, FailedOver};
//! use contentdownload::layers::retry::ContextualRetryLayer;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), contentdownload::error::BoxError> {
//! let resolver = ServiceBuilder::new()
//!     .layer(ContextualRetryLayer::contextual())
//!     .service(service_fn(|_req: http::Request<String>| async {
//!         http::Response::builder().status(429).body(String::new())
//!     }));
//! let req = http::Request::get("https://api.unpaywall.org/v2/10.1000/x")
//!     .extension(OperationType::Resolve)
//!     .body(String::new())?;
//! match resolver.oneshot(req).await {
//!     Ok(response) => println!("resolved: {}", response.status()),
//!     Err(err) if err.is::<FailedOver>() => {
//!         let failover = err.downcast_ref::<FailedOver>().unwrap();
//!         assert_eq!(failover.attempts, 1);
//!         println!("try the next resolver ({})", failover.reason);
//!     }
//!     Err(err) if err.is::<Deferred>() => println!("queue it for the second pass"),
//!     Err(err) => return Err(err),
//! }
//! # Ok(()) }
//! ```
//!
//! # Why budgets and not only max attempts?
//!
//! Max attempts bound one request; they do not bound an outage. When a provider goes down,
//! every request retries 5 times and the client sends 6 times its normal traffic to a
//! server that is already struggling. The per-partition [`Budgets`] let retries add at most
//! a fraction (20% by default, plus a small floor) of the recent first attempts to each
//! `(provider, host)`, so a storm stays a drizzle, and one provider's outage does not use
//! up the retries of the others.

mod backoff;
mod budget;
mod classify;
mod config;
pub mod future;
mod layer;
mod policy;
mod service;
mod slot;
#[cfg(test)]
mod tests;

pub use self::backoff::Backoff;
pub use self::budget::{Budgets, PartitionBudget};
pub use self::classify::Class;
pub use self::config::{BudgetConfig, OperationPolicy, RetryConfig, RetryConfigError};
pub use self::future::DECISION_FIELD;
pub use self::layer::ContextualRetryLayer;
pub use self::policy::{CloneBody, Decision, Reaction};
pub use self::service::ContextualRetry;
pub(crate) use self::slot::hand_up;
#[cfg(test)]
pub(crate) use self::slot::nothing_handed_up;
