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
}

impl ProviderLearningLayer {
    /// A layer feeding `learner`.
    pub fn new(learner: Learner) -> Self {
        ProviderLearningLayer { learner }
    }

    /// The learner.
    pub fn learner(&self) -> &Learner {
        &self.learner
    }
}

impl<S> Layer<S> for ProviderLearningLayer {
    type Service = ProviderLearning<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProviderLearning::new(inner, self.learner.clone())
    }
}
