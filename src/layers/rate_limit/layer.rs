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
    call_key: bool,
}

impl RateLimitLayer {
    /// A layer taking tokens from `limiter`.
    pub fn new(limiter: RateLimiter) -> Self {
        RateLimitLayer {
            limiter,
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

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let mut service = RateLimit::new(inner, self.limiter.clone());
        service.call_key = self.call_key;
        service
    }
}
