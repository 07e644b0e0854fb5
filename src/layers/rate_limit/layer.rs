//! [`RateLimitLayer`].

use tower_layer::Layer;

use super::{RateLimit, RateLimiter};

/// Applies [`RateLimit`] to a service: each request waits for a token of its partition's
/// bucket in the shared [`RateLimiter`].
///
/// The layer holds only the limiter handle; every service it builds shares its buckets.
#[derive(Debug, Clone)]
pub struct RateLimitLayer {
    limiter: RateLimiter,
}

impl RateLimitLayer {
    /// A layer taking tokens from `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer { limiter }
    }

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self.limiter.clone())
    }
}
