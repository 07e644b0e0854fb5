//! Polite, resilient HTTP downloads as [`tower`] layers around one shared hyper client.
//!
//! `contentdownload` makes an HTTP client behave well toward the providers it calls:
//! contextual retry by operation type, a Retry-After cool-down, per-provider rate limits
//! that learn from 429s and recover, idempotency keys, and OpenTelemetry-aligned
//! telemetry. Each behaviour is a [`tower::Layer`], so a download pipeline is a composed
//! [`tower::ServiceBuilder`] around the shared [`service::HttpClient`], and any other
//! tower or hyper client can be wrapped the same way.
//!
//! The crate also ships a runner binary, `contentdownload` (feature `runner`, on by default),
//! that resolves open-access PDFs for scholarly works and downloads them.
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
//! The default features build the runner. Without them
//! (`contentdownload = { version = "0.1", default-features = false }`) the crate is
//! [`context`], [`error`], [`layers`] and [`service`] on tower, tower-http, hyper,
//! hyper-util, hyper-rustls, tokio, tracing, opentelemetry and serde; the idempotency
//! layer's run-once gate then takes any
//! [`ClaimStore`](layers::idempotency::ClaimStore) of yours.
//!
//! | feature | what it adds |
//! | --- | --- |
//! | `runner` (default) | the `contentdownload` binary and its modules: `runner`, `pipeline`, `resolvers`, `download`, `manifest`, `works`, `reason`, `input`, `report` (clap, indicatif, toml, csv, flate2, walkdir, plotters); turns on `ledger` and `csv` |
//! | `ledger` | `ledger`: the job ledger on SQLite (sqlx), a [`ClaimStore`](layers::idempotency::ClaimStore) for the idempotency layer |
//! | `postgres` | the `ledger` on PostgreSQL (`postgres://` URLs, `FOR UPDATE SKIP LOCKED` leasing) for many machines; turns on `ledger` |
//! | `csv` | `layers::telemetry::CsvSink`: attempt records as CSV rows, and `append`, the locked appends it uses |
//! | `simulator` | `simulator`: a scriptable provider simulator (a real hyper server on 127.0.0.1) for tests, benches and examples |
//! | `otlp` | OTLP/HTTP export of the telemetry layer's spans and metrics: `layers::telemetry::otel::otlp` |
//! | `reqwest` | `adapters::reqwest`: a `reqwest_middleware::Middleware` that runs a reqwest client's requests through the stack's policies |
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms, unreachable_pub)]
#![forbid(unsafe_code)]

#[cfg(feature = "reqwest")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest")))]
pub mod adapters;
#[cfg(feature = "csv")]
#[cfg_attr(docsrs, doc(cfg(feature = "csv")))]
pub mod append;
pub mod context;
pub mod error;
pub mod layers;
pub mod service;

#[cfg(feature = "ledger")]
#[cfg_attr(docsrs, doc(cfg(feature = "ledger")))]
pub mod ledger;

#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod download;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod input;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod manifest;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod pipeline;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod reason;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod report;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod resolvers;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod runner;
#[cfg(feature = "runner")]
#[cfg_attr(docsrs, doc(cfg(feature = "runner")))]
pub mod works;

#[cfg(feature = "simulator")]
#[cfg_attr(docsrs, doc(cfg(feature = "simulator")))]
pub mod simulator;
#[cfg(feature = "s3")]
#[cfg_attr(docsrs, doc(cfg(feature = "s3")))]
pub mod store;

// The README's Rust example is compiled as a doc test, so it stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
