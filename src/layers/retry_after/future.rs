//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::parse::hint_from_headers_at;
use super::state::Cooldowns;
use crate::context::{CooldownWait, PartitionKey, RetryAfterHint};
use crate::error::{BoxError, CoolingDown};

pin_project! {
    /// Response future of [`RetryAfter`](super::RetryAfter): waits out the partition's
    /// cool-down (if any), polls its own clone of the inner service for readiness, calls it
    /// (unless `call` found the service ready and called it already), then reads the
    /// response's hint. Nothing below is reserved while it waits.
    #[derive(Debug)]
    pub struct ResponseFuture<F, S, Req> {
        #[pin]
        state: State<F, S, Req>,
        partition: PartitionKey,
        cooldowns: Cooldowns,
        // how long the cool-down held the request, once it is over
        waited: Option<Duration>,
    }
}

pin_project! {
    // The service and the request wait in a box (as do the timer and what the wait needs):
    // a request sent from `call` (nearly every one) needs none of it, and it would make
    // every request's future, and every future around it, larger to move.
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, S, Req> {
        Waiting { wait: Pin<Box<Wait>>, parked: Option<Box<Parked<S, Req>>> },
        Ready { parked: Option<Box<Parked<S, Req>>> },
        Called { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// A cool-down being waited out.
    #[derive(Debug)]
    struct Wait {
        #[pin]
        sleep: Sleep,
        since: Instant,
        max_wait: Duration,
    }
}

/// A request not sent yet, with the service to send it through.
#[derive(Debug)]
struct Parked<S, Req> {
    service: S,
    request: Req,
}

impl<F, S, Req> ResponseFuture<F, S, Req> {
    /// No cool-down, but `service` was not ready at `call`: it is polled for readiness
    /// again, then called.
    pub(crate) fn ready(service: S, request: Req, partition: PartitionKey, cooldowns: Cooldowns) -> Self {
        ResponseFuture {
            state: State::Ready {
                parked: Some(Box::new(Parked { service, request })),
            },
            partition,
            cooldowns,
            waited: None,
        }
    }

    pub(crate) fn waiting(
        service: S,
        request: Req,
        until: Instant,
        partition: PartitionKey,
        max_wait: Duration,
        cooldowns: Cooldowns,
    ) -> Self {
        ResponseFuture {
            state: State::Waiting {
                wait: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(until),
                    since: Instant::now(),
                    max_wait,
                }),
                parked: Some(Box::new(Parked { service, request })),
            },
            partition,
            cooldowns,
            waited: None,
        }
    }

    /// The service was ready at `call` and is called: `future` is its response.
    pub(crate) fn called(future: F, partition: PartitionKey, cooldowns: Cooldowns) -> Self {
        ResponseFuture {
            state: State::Called { future },
            partition,
            cooldowns,
            waited: None,
        }
    }

    pub(crate) fn failed(error: CoolingDown) -> Self {
        let partition = error.partition.clone();
        Self::error(Box::new(error), partition)
    }

    pub(crate) fn error(error: BoxError, partition: PartitionKey) -> Self {
        ResponseFuture {
            partition,
            state: State::Failed { error: Some(error) },
            cooldowns: Cooldowns::new(),
            waited: None,
        }
    }
}

impl<F, S, B, ResB, E> Future for ResponseFuture<F, S, Request<B>>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = E, Future = F>,
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    return Poll::Ready(Err(match error.take() {
                        Some(e) => e,
                        None => "retry_after::ResponseFuture polled after completion".into(),
                    }))
                }
                StateProj::Waiting { wait, parked } => {
                    let mut wait = wait.as_mut().project();
                    ready!(wait.sleep.as_mut().poll(cx));
                    // Another 429 may have pushed the cool-down further while we slept.
                    if let Some(until) = this.cooldowns.until(this.partition) {
                        if until.saturating_duration_since(*wait.since) > *wait.max_wait {
                            let error = CoolingDown {
                                partition: this.partition.clone(),
                                until,
                            };
                            this.state.set(State::Failed {
                                error: Some(Box::new(error)),
                            });
                        } else {
                            wait.sleep.as_mut().reset(until);
                        }
                        continue;
                    }
                    *this.waited = Some(wait.since.elapsed());
                    let parked = parked.take();
                    this.state.set(State::Ready { parked });
                }
                StateProj::Ready { parked } => {
                    // Only now, with the wait over, does the service below get ready.
                    let Some(p) = parked.as_mut() else {
                        return Poll::Ready(Err("retry_after::ResponseFuture polled after completion".into()));
                    };
                    ready!(p.service.poll_ready(cx)).map_err(Into::into)?;
                    let Some(p) = parked.take() else {
                        return Poll::Ready(Err("retry_after::ResponseFuture polled after completion".into()));
                    };
                    let Parked { mut service, request } = *p;
                    let future = service.call(request);
                    this.state.set(State::Called { future });
                }
                StateProj::Called { future } => {
                    let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                    let status = response.status();
                    if let Some(delay) = hint_from_headers_at(status, response.headers(), SystemTime::now) {
                        response.extensions_mut().insert(RetryAfterHint { delay });
                        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
                            this.cooldowns.extend(this.partition.clone(), Instant::now() + delay);
                        }
                    }
                    if let Some(waited) = *this.waited {
                        response.extensions_mut().insert(CooldownWait(waited));
                    }
                    return Poll::Ready(Ok(response));
                }
            }
        }
    }
}
