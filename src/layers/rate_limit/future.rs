//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::RateLimiter;
use crate::context::{PartitionKey, RateLimitWait};
use crate::error::{BoxError, RateLimitTimeout};

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): sleeps until the reserved slot,
    /// then calls the inner service and attaches the wait to the response.
    pub struct ResponseFuture<S, Req, F> {
        #[pin]
        state: State<S, Req, F>,
        wait: Duration,
    }
}

/// A slot less than this far away when a waiter wakes is taken as come: a timer fires at
/// millisecond granularity, and sleeping again for a rounding error would cost a tick.
const RECHECK_SLACK: Duration = Duration::from_millis(1);

/// What a waiting request needs to check its slot again when it wakes up.
#[derive(Debug)]
pub(super) struct Recheck {
    pub(super) limiter: RateLimiter,
    pub(super) key: PartitionKey,
    pub(super) index: u64,
    pub(super) started: Instant,
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, F> {
        Waiting { #[pin] sleep: Sleep, pending: Option<(S, Req)>, recheck: Recheck },
        Called { #[pin] future: F },
        Failed { error: Option<RateLimitTimeout> },
    }
}

impl<S, Req, F> std::fmt::Debug for ResponseFuture<S, Req, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Waiting { .. } => "waiting",
            State::Called { .. } => "called",
            State::Failed { .. } => "failed",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("wait", &self.wait)
            .finish()
    }
}

impl<S, Req, F> ResponseFuture<S, Req, F> {
    pub(super) fn called(future: F) -> Self {
        ResponseFuture {
            state: State::Called { future },
            wait: Duration::ZERO,
        }
    }

    pub(super) fn waiting(service: S, request: Req, wait: Duration, recheck: Recheck) -> Self {
        ResponseFuture {
            state: State::Waiting {
                sleep: tokio::time::sleep_until(recheck.started + wait),
                pending: Some((service, request)),
                recheck,
            },
            wait,
        }
    }

    pub(super) fn failed(error: RateLimitTimeout) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
            wait: Duration::ZERO,
        }
    }
}

impl<S, Req, F, B, E> Future for ResponseFuture<S, Req, F>
where
    S: Service<Req, Future = F, Error = E>,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    mut sleep,
                    pending,
                    recheck,
                } => {
                    ready!(sleep.as_mut().poll(cx));
                    let now = Instant::now();
                    let remaining = recheck.limiter.slot_of(&recheck.key, recheck.index);
                    if remaining > RECHECK_SLACK {
                        // The rate was lowered while we slept: our slot moved later.
                        let total = now + remaining - recheck.started;
                        let max_wait = recheck.limiter.config().max_wait;
                        if total > max_wait {
                            return Poll::Ready(Err(Box::new(RateLimitTimeout {
                                partition: recheck.key.clone(),
                                wait: total,
                                max_wait,
                            })));
                        }
                        sleep.reset(now + remaining);
                        continue;
                    }
                    *this.wait = now - recheck.started;
                    let (svc, _) = pending.as_mut().expect("polled after the request was sent");
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let (mut svc, req) = pending.take().expect("checked just above");
                    let future = svc.call(req);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    response.extensions_mut().insert(RateLimitWait(*this.wait));
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    let err = error.take().expect("polled after completion");
                    return Poll::Ready(Err(Box::new(err)));
                }
            }
        }
    }
}
