use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, Response};
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
/// The service is always ready. A request to a partition that is not cooling down asks
/// the inner service for readiness in `call` and is sent at once when it is ready; one that
/// must wait carries an unready clone of the inner service and polls it for readiness after
/// its cool-down, so a waiting request holds nothing the inner service reserves when ready
/// (a rate-limit slot, a global in-flight permit).
///
/// Clones share the cool-down state ([`Cooldowns`], behind an `Arc`).
#[derive(Clone, Debug)]
pub struct RetryAfter<S> {
    inner: S,
    max_wait: Duration,
    cooldowns: Cooldowns,
    /// Take the key the stack's retry layer shares (`RetryAfterLayer::with_call_key`).
    pub(super) call_key: bool,
}

impl<S> RetryAfter<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, max_wait: Duration, cooldowns: Cooldowns) -> Self {
        RetryAfter {
            inner,
            max_wait,
            cooldowns,
            call_key: false,
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
        // Always ready: the inner service is polled for readiness in `call` when the
        // partition is not cooling down, and by the request's own future after its cool-down
        // otherwise, so a request waiting out a cool-down holds nothing below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let partition = PartitionKey::of_call(&mut req, self.call_key);
        if let Some(until) = self.cooldowns.until(&partition) {
            let now = crate::context::clock::now();
            if until > now {
                if until - now > self.max_wait {
                    return ResponseFuture::failed(CoolingDown { partition, until });
                }
                // An unready clone goes into the future, polled for readiness when the wait
                // is over.
                let service = self.inner.clone();
                return ResponseFuture::waiting(service, req, until, partition, self.max_wait, self.cooldowns.clone());
            }
        }
        // No cool-down: the usual case. The service below is asked whether it is ready now
        // and, if it is, called at once: no clone of it, no request parked in the future.
        // (A waker that does nothing is enough: a service that is not ready goes into the
        // future, which polls it again with the task's own.)
        match self.inner.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => ResponseFuture::called(self.inner.call(req), partition, self.cooldowns.clone()),
            Poll::Ready(Err(e)) => ResponseFuture::error(e.into(), partition),
            Poll::Pending => {
                // The service, with its readiness under way, goes into the future; this
                // layer keeps a fresh clone for the next request.
                let fresh = self.inner.clone();
                let pending = std::mem::replace(&mut self.inner, fresh);
                ResponseFuture::ready(pending, req, partition, self.cooldowns.clone())
            }
        }
    }
}
