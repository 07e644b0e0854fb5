//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::Response;
use pin_project_lite::pin_project;
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::RateLimiter;
use crate::context::{PartitionKey, RateLimitWait};
use crate::error::{BoxError, RateLimitTimeout};

type Acquire = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A response's place under the per-host cap, with
/// [`RateLimitConfig::host_slot_with_response`]: the host's slot stays taken while this
/// extension (or a clone of it) lives, so a download counts against
/// [`max_per_host`] until its body is read, not only until
/// its head came. A caller that streams the body keeps the response's parts (or this
/// extension) until the body is done, as the runner's download does.
///
/// [`RateLimitConfig::host_slot_with_response`]: super::RateLimitConfig::host_slot_with_response
/// [`max_per_host`]: super::RateLimitConfig::max_per_host
#[derive(Clone, Debug)]
pub struct HostPermit(#[allow(dead_code, reason = "held for its drop")] Arc<OwnedSemaphorePermit>);

/// Puts the host's slot in the response when it is to keep it; otherwise frees it.
fn hand_over<B>(response: &mut Response<B>, permit: Option<OwnedSemaphorePermit>, with_response: bool) {
    if let (Some(permit), true) = (permit, with_response) {
        response.extensions_mut().insert(HostPermit(Arc::new(permit)));
    }
}

pin_project! {
    /// Response future of [`RateLimit`](super::RateLimit): waits for a per-host slot (when
    /// the host is at its cap), then for the reserved token slot, then polls its own clone
    /// of the inner service for readiness, calls it, and attaches the wait to the response.
    ///
    /// While it waits it holds an *unready* clone of the inner service, so whatever the
    /// inner service reserves when it becomes ready (a global in-flight permit) is taken
    /// only once the wait is over.
    ///
    /// A request with a token at once and a ready service (nearly every one) was sent from
    /// `call`: its future is the inner one and the host permit. The waiting machinery is
    /// boxed, so that it does not make every request's future (and every future around
    /// it, moved as the layers build them) a few hundred bytes larger.
    pub struct ResponseFuture<S, Req, F> {
        #[pin]
        kind: Kind<S, Req, F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, Req, F> {
        Called {
            #[pin]
            future: F,
            // the per-host slot, freed once the head is in (or the call failed), or handed
            // to the response when `with_response`
            host_permit: Option<OwnedSemaphorePermit>,
            with_response: bool,
        },
        Slow { slow: Pin<Box<Slow<S, Req, F>>> },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// The waiting part of a [`ResponseFuture`].
    struct Slow<S, Req, F> {
        #[pin]
        state: State<F>,
        pending: Option<(S, Req)>,
        gate: Option<Gate>,
        host_permit: Option<OwnedSemaphorePermit>,
        // the response keeps the host's slot
        with_response: bool,
        // when the wait began (none when there was no wait)
        called_at: Option<Instant>,
        // the time held for the host and the token (not for the inner service's readiness)
        wait: Duration,
    }
}

/// A slot less than this far away when a waiter wakes is taken as come: a timer fires at
/// millisecond granularity, and sleeping again for a rounding error would cost a tick.
const RECHECK_SLACK: Duration = Duration::from_millis(1);

/// What a request needs to take (or check again) its token slot.
#[derive(Debug)]
pub(super) struct Gate {
    pub(super) limiter: RateLimiter,
    pub(super) key: PartitionKey,
    /// The reservation's number, once reserved.
    pub(super) index: u64,
    pub(super) reserved_at: Instant,
}

impl Gate {
    /// A gate for `key`, reserved (or waiting for its host) from now.
    pub(super) fn new(limiter: RateLimiter, key: PartitionKey) -> Gate {
        Gate {
            limiter,
            key,
            index: 0,
            reserved_at: crate::context::clock::now(),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Host { acquire: Acquire },
        Waiting { #[pin] sleep: Sleep },
        Ready,
        Called { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<S, Req, F> std::fmt::Debug for ResponseFuture<S, Req, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (state, wait) = match &self.kind {
            Kind::Called { .. } => ("called", Duration::ZERO),
            Kind::Failed { .. } => ("failed", Duration::ZERO),
            Kind::Slow { slow } => (
                match &slow.state {
                    State::Host { .. } => "waiting for the host",
                    State::Waiting { .. } => "waiting",
                    State::Ready => "ready",
                    State::Called { .. } => "called",
                    State::Failed { .. } => "failed",
                },
                slow.wait,
            ),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("wait", &wait)
            .finish()
    }
}

impl<S, Req, F> ResponseFuture<S, Req, F> {
    /// A token slot was reserved (`wait` from now); `service` is an unready clone.
    pub(super) fn reserved(
        service: S,
        request: Req,
        wait: Duration,
        gate: Gate,
        host_permit: Option<OwnedSemaphorePermit>,
    ) -> Self {
        let with_response = gate.limiter.host_slot_with_response();
        let state = if wait.is_zero() {
            State::Ready
        } else {
            State::Waiting {
                sleep: tokio::time::sleep_until(gate.reserved_at + wait),
            }
        };
        Self::slow(Slow {
            called_at: Some(gate.reserved_at),
            state,
            pending: Some((service, request)),
            gate: Some(gate),
            host_permit,
            with_response,
            wait: Duration::ZERO,
        })
    }

    /// The host is at its cap: wait for a permit of `semaphore` first, then reserve a slot.
    pub(super) fn host_full(service: S, request: Req, semaphore: Arc<Semaphore>, gate: Gate) -> Self {
        Self::slow(Slow {
            called_at: Some(gate.reserved_at),
            state: State::Host {
                acquire: Box::pin(semaphore.acquire_owned()),
            },
            pending: Some((service, request)),
            with_response: gate.limiter.host_slot_with_response(),
            gate: Some(gate),
            host_permit: None,
            wait: Duration::ZERO,
        })
    }

    fn slow(slow: Slow<S, Req, F>) -> Self {
        ResponseFuture {
            kind: Kind::Slow { slow: Box::pin(slow) },
        }
    }

    /// A token was there and the service was ready: it was called at once.
    pub(super) fn called(future: F, host_permit: Option<OwnedSemaphorePermit>, with_response: bool) -> Self {
        ResponseFuture {
            kind: Kind::Called {
                future,
                host_permit,
                with_response,
            },
        }
    }

    pub(super) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            kind: Kind::Failed { error: Some(error) },
        }
    }
}

fn gone() -> BoxError {
    "rate_limit::ResponseFuture polled after completion".into()
}

impl<S, Req, F, B, E> Future for ResponseFuture<S, Req, F>
where
    S: Service<Req, Future = F, Error = E>,
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called {
                future,
                host_permit,
                with_response,
            } => {
                let result = ready!(future.poll(cx));
                // the per-host slot is free again once the head is in (or the call failed),
                // unless the response is to keep it
                let permit = host_permit.take();
                let mut response = result.map_err(Into::into)?;
                // (no `RateLimitWait`: absent means the attempt did not wait; leaving it out
                // saves a boxed extension, and often the response's extension map, per
                // request: `layer_cost` under callgrind, a release build without LTO, `rate_limit`
                // 6,742 → 6,008 and `stack` 11,924 → 11,573 instructions)
                hand_over(&mut response, permit, *with_response);
                Poll::Ready(Ok(response))
            }
            KindProj::Slow { slow } => slow.as_mut().poll(cx),
            KindProj::Failed { error } => Poll::Ready(Err(error.take().unwrap_or_else(gone))),
        }
    }
}

impl<S, Req, F, B, E> Future for Slow<S, Req, F>
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
                StateProj::Host { acquire } => {
                    let permit = ready!(acquire.as_mut().poll(cx)).map_err(|_| gone())?;
                    *this.host_permit = Some(permit);
                    let Some(gate) = this.gate.as_mut() else {
                        return Poll::Ready(Err(gone()));
                    };
                    match gate.limiter.reserve_ticket(&gate.key) {
                        Err(timeout) => this.state.set(State::Failed {
                            error: Some(Box::new(timeout)),
                        }),
                        Ok(ticket) => {
                            gate.index = ticket.index;
                            gate.reserved_at = Instant::now();
                            if ticket.wait.is_zero() {
                                *this.wait = this.called_at.map_or(Duration::ZERO, |at| at.elapsed());
                                this.state.set(State::Ready);
                            } else {
                                this.state.set(State::Waiting {
                                    sleep: tokio::time::sleep_until(gate.reserved_at + ticket.wait),
                                });
                            }
                        }
                    }
                }
                StateProj::Waiting { mut sleep } => {
                    ready!(sleep.as_mut().poll(cx));
                    let Some(gate) = this.gate.as_ref() else {
                        return Poll::Ready(Err(gone()));
                    };
                    let now = Instant::now();
                    let remaining = gate.limiter.slot_of(&gate.key, gate.index);
                    if remaining > RECHECK_SLACK {
                        // The rate was lowered while we slept: our slot moved later.
                        let total = now + remaining - gate.reserved_at;
                        let max_wait = gate.limiter.config().max_wait;
                        if total > max_wait {
                            return Poll::Ready(Err(Box::new(RateLimitTimeout {
                                partition: gate.key.clone(),
                                wait: total,
                                max_wait,
                            })));
                        }
                        sleep.reset(now + remaining);
                        continue;
                    }
                    *this.wait = this.called_at.map_or(Duration::ZERO, |at| now - at);
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    // The wait is over: only now does the inner service get ready (and take
                    // whatever it reserves for that, such as a global permit).
                    let Some((svc, _)) = this.pending.as_mut() else {
                        return Poll::Ready(Err(gone()));
                    };
                    ready!(svc.poll_ready(cx)).map_err(Into::into)?;
                    let Some((mut svc, req)) = this.pending.take() else {
                        return Poll::Ready(Err(gone()));
                    };
                    let future = svc.call(req);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx));
                    // the per-host slot is free again once the head is in (or the call
                    // failed), unless the response is to keep it
                    let permit = this.host_permit.take();
                    let mut response = result.map_err(Into::into)?;
                    if !this.wait.is_zero() {
                        response.extensions_mut().insert(RateLimitWait(*this.wait));
                    }
                    hand_over(&mut response, permit, *this.with_response);
                    return Poll::Ready(Ok(response));
                }
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(error.take().unwrap_or_else(gone)));
                }
            }
        }
    }
}
