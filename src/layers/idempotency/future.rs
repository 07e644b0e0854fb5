//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::error::{AlreadyFinalized, LeasedElsewhere};
use super::layer::Gate;
use super::outcome::{self, LedgerJob};
use super::store::{Claimed, JobId, JobState, StoreFuture};
use crate::context::IdempotencyKey;
use crate::error::BoxError;

/// The job a request holds a lease on while it runs.
#[derive(Debug)]
struct Lease {
    job: JobId,
    key: IdempotencyKey,
    gate: Arc<Gate>,
}

pin_project! {
    /// Response future for [`Idempotency`](super::Idempotency).
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        // The request could not be prepared (an unusable caller key).
        Failed { error: Option<BoxError> },
        // Waiting for the ledger to plan and lease the key.
        Claiming {
            fut: StoreFuture<Claimed>,
            parked: Option<Box<Parked<S, B>>>,
            key: Option<IdempotencyKey>,
            gate: Arc<Gate>,
        },
        // Leased: waiting for the inner service to be ready again.
        Ready { parked: Option<Box<Parked<S, B>>>, lease: Option<Lease> },
        // The request is in flight (with a lease, or with no ledger at all).
        Calling { #[pin] fut: S::Future, lease: Option<Lease> },
        // Writing the outcome to the ledger before handing it over.
        Recording { fut: StoreFuture<()>, out: Option<Result<S::Response, BoxError>> },
        Done,
    }
}

/// The service and the request of a claim, boxed: only a request with a ledger to claim in
/// needs them, and inline they made every request's future (and every future around it,
/// moved as the layers above build theirs) the size of a service and a request larger.
struct Parked<S, B> {
    svc: S,
    req: Request<B>,
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    pub(crate) fn failed(error: BoxError) -> Self {
        ResponseFuture {
            state: State::Failed { error: Some(error) },
        }
    }

    pub(crate) fn direct(fut: S::Future) -> Self {
        ResponseFuture {
            state: State::Calling { fut, lease: None },
        }
    }

    pub(crate) fn claiming(
        fut: StoreFuture<Claimed>,
        svc: S,
        req: Request<B>,
        key: IdempotencyKey,
        gate: Arc<Gate>,
    ) -> Self {
        ResponseFuture {
            state: State::Claiming {
                fut,
                parked: Some(Box::new(Parked { svc, req })),
                key: Some(key),
                gate,
            },
        }
    }
}

impl<S, B> std::fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

fn polled_after_completion() -> BoxError {
    "idempotency ResponseFuture polled after completion".into()
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Failed { error } => {
                    let e = error.take().unwrap_or_else(polled_after_completion);
                    this.state.set(State::Done);
                    return Poll::Ready(Err(e));
                }
                StateProj::Claiming { fut, parked, key, gate } => {
                    let claim = ready!(fut.as_mut().poll(cx));
                    let key = key.take().ok_or_else(polled_after_completion)?;
                    let err: BoxError = match claim {
                        Ok(Claimed::Leased(job)) => {
                            let lease = Lease {
                                job,
                                key,
                                gate: gate.clone(),
                            };
                            let parked = parked.take();
                            this.state.set(State::Ready {
                                parked,
                                lease: Some(lease),
                            });
                            continue;
                        }
                        Ok(Claimed::Settled { job, state, result }) => Box::new(AlreadyFinalized {
                            key,
                            job,
                            state,
                            result,
                        }),
                        Ok(Claimed::Busy {
                            job,
                            owner,
                            expires_at_ms,
                        }) => Box::new(LeasedElsewhere {
                            key,
                            job,
                            owner,
                            expires_at_ms,
                        }),
                        Err(e) => e,
                    };
                    this.state.set(State::Done);
                    return Poll::Ready(Err(err));
                }
                StateProj::Ready { parked, lease } => {
                    let p = parked.as_mut().ok_or_else(polled_after_completion)?;
                    let ready = ready!(p.svc.poll_ready(cx)).map_err(Into::into);
                    match ready {
                        Ok(()) => {
                            let Parked { mut svc, req } = *parked.take().ok_or_else(polled_after_completion)?;
                            let fut = svc.call(req);
                            let lease = lease.take();
                            this.state.set(State::Calling { fut, lease });
                        }
                        Err(e) => {
                            let Some(lease) = lease.take() else {
                                this.state.set(State::Done);
                                return Poll::Ready(Err(e));
                            };
                            let (to, result) = outcome::of_error(&e);
                            let fut = lease
                                .gate
                                .store
                                .complete(lease.job, lease.gate.worker.clone(), to, result);
                            this.state.set(State::Recording { fut, out: Some(Err(e)) });
                        }
                    }
                }
                StateProj::Calling { fut, lease } => {
                    let out = ready!(fut.poll(cx)).map_err(Into::into);
                    let Some(lease) = lease.take() else {
                        this.state.set(State::Done);
                        return Poll::Ready(out);
                    };
                    let (to, result) = match &out {
                        Ok(res) => outcome::of_response(res),
                        Err(e) => outcome::of_error(e),
                    };
                    let keep_leased = to == JobState::Finalized && !lease.gate.finalize_on_response;
                    let out = out.map(|mut res| {
                        res.extensions_mut().insert(LedgerJob {
                            job: lease.job,
                            key: lease.key.clone(),
                            owner: lease.gate.worker.clone(),
                            state: if keep_leased { JobState::Leased } else { to },
                        });
                        res
                    });
                    if keep_leased {
                        this.state.set(State::Done);
                        return Poll::Ready(out);
                    }
                    let fut = lease
                        .gate
                        .store
                        .complete(lease.job, lease.gate.worker.clone(), to, result);
                    this.state.set(State::Recording { fut, out: Some(out) });
                }
                StateProj::Recording { fut, out } => {
                    let recorded = ready!(fut.as_mut().poll(cx));
                    let out = out.take().ok_or_else(polled_after_completion)?;
                    this.state.set(State::Done);
                    return Poll::Ready(match (recorded, out) {
                        (Ok(()), out) => out,
                        // the operation failed anyway: its own error says more
                        (Err(e), Err(original)) => {
                            tracing::warn!(error = %e, "could not record a failed operation in the ledger");
                            Err(original)
                        }
                        // done, but not recorded (the lease was lost, or the database failed)
                        (Err(e), Ok(_)) => Err(e),
                    });
                }
                StateProj::Done => return Poll::Ready(Err(polled_after_completion())),
            }
        }
    }
}
