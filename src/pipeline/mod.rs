//! The download pipeline: works in, outcomes out.
//!
//! For each work the [`Fallback`] asks its tiers of resolvers for candidate URLs and
//! downloads them (validated, streamed) until one gives a PDF.

mod config;
mod fallback;
mod run;

pub use self::config::{FallbackConfig, FallbackConfigError, TierConfig};
pub use self::fallback::{Fallback, FetchEnv, FetchResult, TriedUrls};
pub use self::run::{Pipeline, PipelineConfig, PipelineError, Progress};
