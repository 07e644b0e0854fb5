//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::budget::PartitionBudget;
use super::classify::{classify_error, classify_response, Class};
use super::config::RetryConfig;
use super::policy::{clone_request, Attempt, CloneBody, Decision, GaveUp, NotResendable, Resendable};
use super::slot::take_handed_up;
use crate::context::{AttemptNumber, OperationType};
use crate::error::{BoxError, Deferred, FailedOver};
use crate::layers::telemetry::{tracing_is_silent, RetryBudgetExhausted};

/// The span field the decision is recorded on (declared by the telemetry layer's
/// operation span; recording on a span without it does nothing).
pub const DECISION_FIELD: &str = "contentdownload.retry.decision";

/// What a [`ResponseFuture`] needs to know about its operation, fixed at `call`.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) operation: OperationType,
    pub(crate) started: Instant,
    pub(crate) has_key: bool,
    pub(crate) resendable: Resendable,
    pub(crate) budget: Option<PartitionBudget>,
    /// The policy lists no status below 400: a response below 400 is a success.
    pub(crate) plain_success: bool,
}

/// The service's unready copy for resends, with the configuration: one `Arc` for a future
/// to clone rather than two (each clone and drop a write to memory every worker thread shares).
#[derive(Debug)]
pub(crate) struct Shared<S> {
    pub(crate) service: S,
    pub(crate) config: Arc<RetryConfig>,
}

/// Where a resend's request comes from.
#[derive(Debug)]
pub(crate) enum Spare<B> {
    /// A copy of this layer's own. Boxed: the copy is needed only for a resend, and inline it
    /// made every request's future (and each future around it) ~250 bytes larger to build
    /// and to move, and the stack's whole boxed future too large for the allocator's fast path.
    Own(Option<Box<Request<B>>>),
    /// The copy the redirect layer below hands up when its attempt ends (`slot.rs`), kept
    /// only when a resend is decided.
    Below(Option<Box<Request<B>>>),
}

impl<B> Spare<B> {
    fn take(&mut self) -> Option<Request<B>> {
        match self {
            Spare::Own(copy) | Spare::Below(copy) => copy.take().map(|copy| *copy),
        }
    }
}

pin_project! {
    /// Response future of [`ContextualRetry`](super::ContextualRetry): an attempt in
    /// flight, a backoff, or a wait for the inner service's readiness, in a loop until the
    /// policy decides.
    #[derive(Debug)]
    pub struct ResponseFuture<F, S, B> {
        #[pin]
        state: State<F>,
        // the service's shared unready copy (and the configuration), and the clone of it a
        // resend goes through
        shared: Arc<Shared<S>>,
        resending: Option<Box<S>>,
        spare: Spare<B>,
        attempt: u32,
        plan: Plan,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Called { #[pin] future: F },
        Backoff { #[pin] sleep: Sleep },
        Ready,
    }
}

impl<F, S, B> ResponseFuture<F, S, B> {
    pub(crate) fn new(future: F, shared: Arc<Shared<S>>, spare: Spare<B>, plan: Plan) -> Self {
        ResponseFuture {
            state: State::Called { future },
            shared,
            resending: None,
            spare,
            attempt: 1,
            plan,
        }
    }
}

impl<F, S, B, ResB, E> Future for ResponseFuture<F, S, B>
where
    S: Service<Request<B>, Response = Response<ResB>, Error = E, Future = F> + Clone,
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
    B: CloneBody + 'static,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let plan = &*this.plan;
        let policy = this.shared.config.policy(plan.operation);
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let result = ready!(future.poll(cx)).map_err(Into::into);
                    // (taken at once, whatever is decided and whoever keeps the spare: a
                    // copy left behind would hold the request, credentials included, until
                    // the thread's next hand-off)
                    let handed_up = take_handed_up::<B>().filter(|_| matches!(this.spare, Spare::Below(_)));
                    if matches!(&result, Ok(res) if plan.plain_success && res.status().as_u16() < 400) {
                        // A success (nearly every response): `decide` says `Done` without
                        // looking at the attempt, and nothing is logged.
                        drop(handed_up);
                        if !tracing_is_silent() {
                            tracing::Span::current().record(DECISION_FIELD, Decision::Done.as_str());
                        }
                        return Poll::Ready(result);
                    }
                    let (class, hint) = match &result {
                        Ok(res) => classify_response(policy, res),
                        Err(err) => classify_error(&**err),
                    };
                    let attempt = Attempt {
                        number: *this.attempt,
                        // (a success is decided without it: no clock read for it)
                        elapsed: if class == Class::Success {
                            std::time::Duration::ZERO
                        } else {
                            plan.started.elapsed()
                        },
                        has_key: plan.has_key,
                        // no copy in hand when the body could not be cloned (or, harmlessly, when
                        // no attempt is left, which `decide` checks first)
                        resendable: match (
                            matches!(this.spare, Spare::Own(Some(_))) || handed_up.is_some(),
                            plan.resendable,
                        ) {
                            (true, _) => Resendable::Yes,
                            (false, Resendable::No(why)) => Resendable::No(why),
                            (false, Resendable::Yes) => Resendable::No(NotResendable::NoCopyLeft),
                        },
                    };
                    let (mut decision, mut gave_up) = policy.decide(class, hint, attempt);
                    let mut budget_refused = false;
                    if matches!(decision, Decision::Retry(_)) && plan.budget.as_ref().is_some_and(|b| !b.withdraw()) {
                        (decision, gave_up) = policy.budget_refused();
                        budget_refused = true;
                    }
                    // (no span to record on when nobody listens: `Span::current` asks the
                    // dispatcher every time, ~120 instructions per request)
                    if !tracing_is_silent() {
                        tracing::Span::current().record(DECISION_FIELD, decision.as_str());
                    }
                    let status = result.as_ref().ok().map(Response::status);
                    match decision {
                        Decision::Retry(wait) => {
                            tracing::debug!(
                                operation = plan.operation.as_str(),
                                attempt = *this.attempt,
                                reason = class.describe(),
                                status = status.map(|s| s.as_u16()),
                                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                                "retrying"
                            );
                            drop(result);
                            if let Some(copy) = handed_up {
                                *this.spare = Spare::Below(Some(copy));
                            }
                            if wait.is_zero() {
                                this.state.set(State::Ready);
                            } else {
                                this.state.set(State::Backoff {
                                    sleep: tokio::time::sleep(wait),
                                });
                            }
                        }
                        Decision::Done | Decision::Fail => {
                            if let Some(why) = gave_up {
                                tracing::debug!(
                                    operation = plan.operation.as_str(),
                                    attempts = *this.attempt,
                                    reason = class.describe(),
                                    "giving up: {why}"
                                );
                            }
                            // tell telemetry (the operation placement counts it)
                            let result = result.map(|mut res| {
                                if budget_refused {
                                    res.extensions_mut().insert(RetryBudgetExhausted);
                                }
                                res
                            });
                            return Poll::Ready(result);
                        }
                        Decision::Defer => {
                            let e = Deferred {
                                operation: plan.operation,
                                status,
                                retry_after: hint,
                                attempts: *this.attempt,
                                reason: reason(class, status, gave_up),
                            };
                            return Poll::Ready(Err(Box::new(e)));
                        }
                        Decision::Failover => {
                            let e = FailedOver {
                                operation: plan.operation,
                                status,
                                retry_after: hint,
                                attempts: *this.attempt,
                                reason: reason(class, status, gave_up),
                            };
                            return Poll::Ready(Err(Box::new(e)));
                        }
                    }
                }
                StateProj::Backoff { sleep } => {
                    ready!(sleep.poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    let resending = this
                        .resending
                        .get_or_insert_with(|| Box::new(S::clone(&this.shared.service)));
                    ready!(resending.poll_ready(cx)).map_err(Into::into)?;
                    let Some(mut req) = this.spare.take() else {
                        // unreachable: a Retry is only decided with a spare request in hand
                        return Poll::Ready(Err("retry: no copy of the request left to resend".into()));
                    };
                    *this.attempt += 1;
                    // (a copy from below is left there again by the resend's own attempt)
                    if *this.attempt < policy.max_attempts && matches!(this.spare, Spare::Own(_)) {
                        *this.spare = Spare::Own(clone_request(&req).map(Box::new));
                    }
                    req.extensions_mut().insert(AttemptNumber(*this.attempt));
                    let future = resending.call(req);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

fn reason(class: Class, status: Option<StatusCode>, gave_up: Option<GaveUp>) -> String {
    let what = match status {
        Some(s) => format!("{} ({})", class.describe(), s.as_u16()),
        None => class.describe().to_owned(),
    };
    match gave_up {
        Some(why) => format!("{what}; gave up: {why}"),
        None => what,
    }
}
