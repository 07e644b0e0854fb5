use std::sync::Arc;

use tower_layer::Layer;

use super::budget::Budgets;
use super::config::{RetryConfig, RetryConfigError};
use super::service::ContextualRetry;

/// Applies [`ContextualRetry`] to a service: retries chosen by the request's
/// [`OperationType`](crate::context::OperationType).
///
/// The layer holds the (validated) configuration and a handle to the per-partition retry
/// [`Budgets`]; every service it builds, and every clone of the layer, shares them.
#[derive(Clone, Debug)]
pub struct ContextualRetryLayer {
    config: Arc<RetryConfig>,
    budgets: Budgets,
    /// Resend from the copy the redirect layer directly below keeps (see `slot.rs`).
    copy_from_below: bool,
    share_key: bool,
}

impl ContextualRetryLayer {
    /// A layer with this configuration; fails with the name of the first field that
    /// cannot be used.
    pub fn new(config: RetryConfig) -> Result<Self, RetryConfigError> {
        config.validate()?;
        let budgets = Budgets::new(config.budget.clone());
        Ok(ContextualRetryLayer {
            config: Arc::new(config),
            budgets,
            copy_from_below: false,
            share_key: false,
        })
    }

    /// The default contextual table (see [`RetryConfig::default`]).
    pub fn contextual() -> Self {
        Self::from_valid(RetryConfig::default())
    }

    /// Contextual retry switched off: every operation gets the standard policy.
    pub fn standard() -> Self {
        Self::from_valid(RetryConfig::standard())
    }

    fn from_valid(config: RetryConfig) -> Self {
        let budgets = Budgets::new(config.budget.clone());
        ContextualRetryLayer {
            config: Arc::new(config),
            budgets,
            copy_from_below: false,
            share_key: false,
        }
    }

    /// Shares these budgets (for example with the layers of the other operation stacks).
    pub fn with_budgets(mut self, budgets: Budgets) -> Self {
        self.budgets = budgets;
        self
    }

    /// Resends from the copy of the request that the stack's
    /// [`RedirectLayer`](crate::service::RedirectLayer) keeps, instead of keeping one of its
    /// own. Only for a redirect layer *directly* below (what the
    /// [`Stack`](crate::service::Stack) builds): without one, nothing is resent.
    pub(crate) fn with_copy_from_below(mut self) -> Self {
        self.copy_from_below = true;
        self
    }

    /// Shares each request's partition key with the layers it calls instead of caching it
    /// in the request (`context::clock`): only for the [`Stack`](crate::service::Stack),
    /// whose partition layers below are built to take it.
    pub(crate) fn with_key_shared(mut self) -> Self {
        self.share_key = true;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The per-partition retry budgets the built services share.
    pub fn budgets(&self) -> &Budgets {
        &self.budgets
    }
}

impl Default for ContextualRetryLayer {
    fn default() -> Self {
        Self::contextual()
    }
}

impl<S: Clone> Layer<S> for ContextualRetryLayer {
    type Service = ContextualRetry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = ContextualRetry::new(inner, self.config.clone(), self.budgets.clone());
        service.copy_from_below = self.copy_from_below;
        service.share_key = self.share_key;
        service
    }
}
