//! The tower layers, one folder each.
//!
//! The stack order, outer to inner, is:
//! telemetry (operation) → idempotency → contextual retry → telemetry (attempt) →
//! Retry-After cool-down → provider learning → rate limit → tower-http layers → client.
//! Each layer reads the request context (see [`crate::context`]) from the request's
//! extensions and can be left out of a `ServiceBuilder` with `option_layer`.

pub mod idempotency;
pub mod learning;
pub mod rate_limit;
pub mod retry;
pub mod retry_after;
pub mod telemetry;
