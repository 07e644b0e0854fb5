//! The download pipeline: works in, outcomes out.
//!
//! For each work the [`Fallback`] asks its tiers of resolvers for candidate URLs and
//! downloads them (validated, streamed) until one gives a PDF.

mod config;
mod fallback;
mod finish;
mod frontier;
mod run;
mod second_pass;
mod sibling;
mod work;

pub use self::config::{FallbackConfig, FallbackConfigError, TierConfig};
pub use self::fallback::{DeferredBy, Fallback, FetchEnv, FetchResult, TriedUrls};
pub use self::run::{Pipeline, PipelineConfig, PipelineError, Progress};
pub use self::second_pass::{DEFAULT_SECOND_PASS_MAX_WAIT, NO_HINT_WAIT};
