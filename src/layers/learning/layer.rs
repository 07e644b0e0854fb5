//! [`ProviderLearningLayer`].

use tower_layer::Layer;

use super::{Learner, ProviderLearning};

/// Applies [`ProviderLearning`] to a service: every response teaches the shared
/// [`Learner`], which sets the partition's rate in its rate limiter.
///
/// Place it directly above the [`RateLimitLayer`](crate::layers::rate_limit::RateLimitLayer)
/// built from the same limiter, below the retry layer, so that it sees every attempt.
#[derive(Debug, Clone)]
pub struct ProviderLearningLayer {
    learner: Learner,
    call_key: bool,
}

impl ProviderLearningLayer {
    /// A layer feeding `learner`.
    pub fn new(learner: Learner) -> Self {
        ProviderLearningLayer {
            learner,
            call_key: false,
        }
    }

    /// Takes the partition key the stack's retry layer shares for the call under way
    /// (`context::clock`), when there is one, instead of caching it in the request: only
    /// for the [`Stack`](crate::service::Stack).
    pub(crate) fn with_call_key(mut self) -> Self {
        self.call_key = true;
        self
    }

    /// The learner.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }
}

impl<S> Layer<S> for ProviderLearningLayer {
    type Service = ProviderLearning<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = ProviderLearning::new(inner, self.learner.clone());
        service.call_key = self.call_key;
        service
    }
}
