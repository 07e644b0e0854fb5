use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::state::Cooldowns;
use crate::context::PartitionKey;
use crate::error::{BoxError, CoolingDown};

/// Honours providers' wait hints: attaches the parsed hint to each response as a
/// [`RetryAfterHint`](crate::context::RetryAfterHint), starts a cool-down of the request's
/// partition after a 429 or 503 with a hint, and holds later requests to that partition
/// until the cool-down ends (or fails them with [`CoolingDown`] when the wait is longer
/// than the maximum).
///
/// The service is always ready; each request carries an unready clone of the inner service
/// and polls it for readiness after its cool-down, so a waiting request holds nothing the
/// inner service reserves when ready (a rate-limit slot, a global in-flight permit).
///
/// Clones share the cool-down state ([`Cooldowns`], behind an `Arc`).
#[derive(Clone, Debug)]
pub struct RetryAfter<S> {
    inner: S,
    max_wait: Duration,
    cooldowns: Cooldowns,
}

impl<S> RetryAfter<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, max_wait: Duration, cooldowns: Cooldowns) -> Self {
        RetryAfter {
            inner,
            max_wait,
            cooldowns,
        }
    }

    /// The shared cool-down state.
    pub fn cooldowns(&self) -> &Cooldowns {
        &self.cooldowns
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for RetryAfter<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Request<B>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: each request polls its own clone of the inner service, after its
        // cool-down, so a request waiting out a cool-down holds nothing below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let partition = PartitionKey::of(&mut req);
        let now = Instant::now();
        match self.cooldowns.until(&partition) {
            Some(until) if until > now => {
                if until - now > self.max_wait {
                    return ResponseFuture::failed(CoolingDown { partition, until });
                }
                // An unready clone goes into the future, polled for readiness when the wait
                // is over.
                let service = self.inner.clone();
                ResponseFuture::waiting(service, req, until, partition, self.max_wait, self.cooldowns.clone())
            }
            _ => ResponseFuture::ready(
                self.inner.clone(),
                req,
                partition,
                self.max_wait,
                self.cooldowns.clone(),
            ),
        }
    }
}
