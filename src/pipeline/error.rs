//! What stops a run: [`PipelineError`] and its typed causes.

use crate::ledger::LedgerError;

use super::FallbackConfigError;

/// A failure that stops the run (a single work's failure does not).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The ledger could not be used.
    #[error("the ledger failed: {0}")]
    Ledger(#[from] LedgerError),
    /// The manifest could not be written.
    #[error("cannot write the manifest: {0}")]
    Manifest(#[from] std::io::Error),
    /// The configuration is not usable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Downloaded files could not be forced to disk or recorded (`--durability batch`);
    /// they are not recorded as downloaded.
    #[error(transparent)]
    Durability(#[from] DurabilityError),
}

/// A [`PipelineConfig`](super::PipelineConfig) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// [`workers`](super::PipelineConfig::workers) is zero.
    #[error("workers must be at least 1")]
    NoWorkers,
    /// The fallback's tiers or budgets.
    #[error(transparent)]
    Fallback(#[from] FallbackConfigError),
}

/// Downloaded works could not be made durable and recorded as such.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurabilityError {
    /// The files could not be synced.
    #[error("cannot force the downloaded files to disk: {0}")]
    Sync(#[source] std::io::Error),
    /// The task that records downloaded works is gone (its runtime ended).
    #[error("the finisher is not running; downloaded works cannot be recorded")]
    FinisherGone,
    /// The task that records downloaded works stopped without saying why.
    #[error("the finisher stopped")]
    FinisherStopped,
}
