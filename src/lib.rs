//! Polite, resilient HTTP downloads as [`tower`] layers around one shared hyper client.
//!
//! `contentdownload` makes an HTTP client behave well toward the providers it calls:
//! contextual retry by operation type, a Retry-After cool-down, per-provider rate limits
//! that learn from 429s and recover, idempotency keys, and OpenTelemetry-aligned
//! telemetry. Each behaviour is a [`tower::Layer`], so a download pipeline is a composed
//! [`tower::ServiceBuilder`] around the shared [`service::HttpClient`], and any other
//! tower or hyper client can be wrapped the same way.
//!
//! The crate also ships a runner binary, `contentdownload`, that resolves open-access PDFs
//! for scholarly works and downloads them.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use contentdownload::context::{OperationType, Provider};
//! use contentdownload::service::{HttpClient, HttpConfig};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn demo() -> Result<(), contentdownload::error::BoxError> {
//! let client = HttpClient::new(&HttpConfig {
//!     mailto: Some("me@example.org".into()),
//!     ..HttpConfig::default()
//! })?;
//! let stack = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(120))
//!     .service(client);
//!
//! let req = http::Request::get("https://api.unpaywall.org/v2/10.1038/nature12373?email=me@example.org")
//!     .extension(OperationType::Resolve)
//!     .extension(Provider::new("unpaywall"))
//!     .body(Default::default())?;
//! let response = stack.oneshot(req).await?;
//! assert!(response.status().is_success());
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `simulator` | [`simulator`]: a scriptable provider simulator (a real hyper server on 127.0.0.1) for tests, benches and examples |
//! | `postgres` | the [`ledger`] on PostgreSQL (`postgres://` URLs, `FOR UPDATE SKIP LOCKED` leasing) for many machines; SQLite is always available |
//! | `otlp` | OTLP/HTTP export of the telemetry layer's spans and metrics: `layers::telemetry::otel::otlp` |
//! | `reqwest` | `adapters::reqwest`: a `reqwest_middleware::Middleware` that runs a reqwest client's requests through the stack's policies |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod adapters;
pub mod append;
pub mod context;
pub mod download;
pub mod error;
pub mod input;
pub mod layers;
pub mod ledger;
pub mod manifest;
pub mod pipeline;
pub mod reason;
pub mod report;
pub mod resolvers;
pub mod runner;
pub mod service;
pub mod works;

#[cfg(feature = "simulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "simulator")))]
pub mod simulator;

// The README's Rust example is compiled as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
