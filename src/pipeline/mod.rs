//! The download pipeline: works in, outcomes out.
//!
//! For each work the [`Fallback`] asks its tiers of resolvers for candidate URLs and
//! downloads them (validated, streamed) until one gives a PDF.
//!
//! The files, each with one role; none imports a file that imports it:
//! - `run.rs`: [`Pipeline`] and its passes (the first pass over the input, the wait for
//!   works leased elsewhere, the second pass's plan and its attempts);
//! - `work.rs`: `Core`, what each work's task shares, and one work's way: its ledger claim
//!   (the pipeline is the ledger's only claimant), its fetch, its outcome recorded;
//! - `sibling.rs`: waiting for works leased by another worker;
//! - `fallback.rs`: one work's tiers of resolvers and candidate downloads; `answers.rs`:
//!   the resolvers' answers remembered in the ledger, and their counts; `choice.rs`: which
//!   valid PDF of a tier wins;
//! - `frontier.rs`: the worker slots and the hosts' turns; `finish.rs`: downloads made
//!   durable and recorded in groups; `second_pass.rs`: when a deferred work goes again;
//! - `config.rs` and `error.rs`: what a pipeline is given and what stops it.

mod answers;
mod choice;
mod config;
mod error;
mod fallback;
mod finish;
mod frontier;
mod rate_log;
mod run;
mod second_pass;
mod sibling;
mod work;

use std::sync::Mutex;

pub use self::choice::{PUBLISHER_SOURCES, WAIT_FOR_BETTER};
pub use self::config::{FallbackConfig, FallbackConfigError, PipelineConfig, TierConfig, DEFAULT_RESOLVER_CACHE_TTL};
pub use self::error::{ConfigError, DurabilityError, PipelineError};
pub use self::fallback::{DeferredBy, Fallback, FetchEnv, FetchResult, TriedUrls};
pub use self::run::{Pipeline, Progress};
pub use self::second_pass::{DEFAULT_SECOND_PASS_MAX_WAIT, NO_HINT_WAIT};

/// Locks `m`, past a poisoning (the state behind each of the pipeline's locks stays
/// consistent at every await and panic point).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
