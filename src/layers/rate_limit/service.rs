//! [`RateLimit`].

use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use tower_service::Service;

use super::future::{Gate, ResponseFuture};
use super::limiter::HostSlot;
use super::RateLimiter;
use crate::context::PartitionKey;
use crate::error::BoxError;

/// Holds each request until its partition's bucket has a token (and, with a per-host cap,
/// until its host has a free slot), then sends it.
///
/// The partition is [`PartitionKey::of`] the request. The service itself is always ready;
/// the wait happens in the response future on a tokio timer, in the order the requests
/// were called; a waiter whose slot moved later meanwhile (the rate was lowered) sleeps
/// again until the new slot. A wait over the limiter's maximum fails with
/// [`RateLimitTimeout`](crate::error::RateLimitTimeout). A time waited is attached to the
/// response as [`RateLimitWait`](crate::context::RateLimitWait) (absent when the attempt did
/// not wait: [`RateLimitWait::of`](crate::context::RateLimitWait::of) reads it as zero).
///
/// Waiting holds nothing: each request carries an *unready* clone of the inner service and
/// polls it for readiness only once its wait is over, so a global in-flight cap below
/// ([`RateLimiter::global_concurrency_layer`]) gives its permit to requests about to be
/// sent, never to one sleeping for a slow partition. With
/// [`max_per_host`](super::RateLimitConfig::max_per_host), a request to a host at its cap
/// waits for a free slot first, before it reserves a token.
///
/// Clones share the limiter's buckets.
#[derive(Debug, Clone)]
pub struct RateLimit<S> {
    inner: S,
    limiter: RateLimiter,
    /// Take the key the stack's retry layer shares (`RateLimitLayer::with_call_key`).
    pub(super) call_key: bool,
}

impl<S> RateLimit<S> {
    /// Wraps `inner`, taking tokens from `limiter`.
    pub fn new(inner: S, limiter: RateLimiter) -> Self {
        RateLimit {
            inner,
            limiter,
            call_key: false,
        }
    }

    /// The limiter.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the wrapper.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RateLimit<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, Request<ReqB>, S::Future>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Always ready: the inner service is polled by each request's own clone, after the
        // wait (see the type's documentation).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let key = PartitionKey::of_call(&mut req, self.call_key);
        let permit = match self.limiter.host_slot(&key) {
            HostSlot::Unlimited => None,
            HostSlot::Taken(permit) => Some(permit),
            HostSlot::Full(semaphore) => {
                let gate = Gate::new(self.limiter.clone(), key);
                return ResponseFuture::host_full(self.inner.clone(), req, semaphore, gate);
            }
        };
        let ticket = match self.limiter.reserve_ticket(&key) {
            Err(timeout) => return ResponseFuture::failed(Box::new(timeout)),
            Ok(ticket) => ticket,
        };
        if ticket.wait.is_zero() {
            // A token now: the usual case. The service below is asked whether it is ready now
            // and, if it is, called at once: no clone of it, no request parked in the future.
            // (A waker that does nothing is enough: a service that is not ready goes into the
            // future, which polls it again with the task's own.)
            match self.inner.poll_ready(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(Ok(())) => {
                    let with_response = self.limiter.host_slot_with_response();
                    return ResponseFuture::called(self.inner.call(req), permit, with_response);
                }
                Poll::Ready(Err(e)) => return ResponseFuture::failed(e.into()),
                Poll::Pending => {}
            }
        }
        // A wait, or a service not ready yet: the service goes into the future (for a wait an
        // unready clone, polled only once the wait is over; otherwise the one whose readiness
        // is under way, and this layer keeps a fresh clone for the next request).
        let service = if ticket.wait.is_zero() {
            let fresh = self.inner.clone();
            std::mem::replace(&mut self.inner, fresh)
        } else {
            self.inner.clone()
        };
        let mut gate = Gate::new(self.limiter.clone(), key);
        gate.index = ticket.index;
        ResponseFuture::reserved(service, req, ticket.wait, gate, permit)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
    use tower_test::mock;

    use super::*;
    use crate::context::RateLimitWait;
    use crate::error::RateLimitTimeout;
    use crate::layers::rate_limit::{Quota, RateLimitConfig, RateLimitLayer};

    fn layer(max_wait: Duration) -> RateLimitLayer {
        RateLimitLayer::new(
            RateLimiter::new(RateLimitConfig {
                default: Quota::per_second(1.0),
                max_wait,
                ..RateLimitConfig::default()
            })
            .unwrap(),
        )
    }

    fn req() -> Request<&'static str> {
        Request::get("https://example.org/x").body("x").unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_second_request_reaches_the_service_after_one_interval() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request<&str>, Response<()>, _>(layer(Duration::from_secs(5)));
        assert_ready_ok!(svc.poll_ready());
        let mut first = tokio_test::task::spawn(svc.call(req()));
        assert_ready_ok!(svc.poll_ready());
        let mut second = tokio_test::task::spawn(svc.call(req()));

        assert_pending!(first.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(()));
        let res = assert_ready_ok!(first.poll());
        assert_eq!(res.extensions().get::<RateLimitWait>(), None, "no wait, no extension");

        assert_pending!(second.poll());
        assert_pending!(handle.poll_request(), "not sent before its slot");
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_pending!(second.poll());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_pending!(second.poll());
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(()));
        let res = assert_ready_ok!(second.poll());
        assert_eq!(
            res.extensions().get::<RateLimitWait>(),
            Some(&RateLimitWait(Duration::from_secs(1)))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_the_bound_the_error_is_immediate_and_typed() {
        let (mut svc, mut handle) = mock::spawn_layer::<Request<&str>, Response<()>, _>(layer(Duration::ZERO));
        assert_ready_ok!(svc.poll_ready());
        let mut first = tokio_test::task::spawn(svc.call(req()));
        assert_pending!(first.poll());
        assert_ready_ok!(svc.poll_ready());
        let mut second = tokio_test::task::spawn(svc.call(req()));
        let err = assert_ready!(second.poll()).unwrap_err();
        let timeout = err.downcast_ref::<RateLimitTimeout>().unwrap();
        assert_eq!(timeout.wait, Duration::from_secs(1));
        let (_, _send) = handle.next_request().await.unwrap(); // the first
        assert_pending!(handle.poll_request(), "the second never reaches the service");
    }
}
