use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderName;
use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::budget::Budgets;
use super::config::RetryConfig;
use super::future::{Plan, ResponseFuture, Shared, Spare};
use super::policy::{clone_request, CloneBody, NotResendable, Resendable};
use super::slot::can_hand_up;
use crate::context::{AttemptNumber, IdempotencyKey, OperationType, PartitionKey};
use crate::error::BoxError;

static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// Retries a request by the policy of its [`OperationType`]: sets
/// [`AttemptNumber`] on every attempt, waits the backoff or the server's hint, and ends
/// with the response, the error, or a typed [`Deferred`](crate::error::Deferred) /
/// [`FailedOver`](crate::error::FailedOver).
///
/// Clones share the configuration and the per-partition budgets (behind `Arc`s).
///
/// # Why a shared copy of the inner service
///
/// A request that may be resent needs a service to resend it through, long after `call`.
/// tower's `Retry` clones the inner service into every response future; below this layer
/// that is the rest of the stack (redirects, telemetry, cool-downs, learning, the rate
/// limit, the client), cloned and dropped on every request though a resend is rare. Here
/// every future shares one unready copy behind an `Arc`, taken when the service is built
/// (and again after [`get_mut`](Self::get_mut)), and clones it only to resend.
#[derive(Clone, Debug)]
pub struct ContextualRetry<S> {
    inner: S,
    /// An unready copy of `inner` for resends; `None` after `get_mut` until the next call.
    spare_service: Option<Arc<Shared<S>>>,
    config: Arc<RetryConfig>,
    budgets: Budgets,
    /// Resend from the copy the redirect layer below keeps (`ContextualRetryLayer::with_copy_from_below`).
    pub(super) copy_from_below: bool,
    /// Share the partition key with the layers called (`ContextualRetryLayer::with_key_shared`).
    pub(super) share_key: bool,
    /// Per operation type (`OperationType::ALL`'s order): whether its policy lists no status
    /// below 400, so that a response below 400 is a success without searching the lists
    /// (under callgrind, instructions per request: `layer_cost stack` 13,105 → 13,046,
    /// `layer_cost retry` 7,731 → 7,558).
    plain_success: [bool; 5],
}

impl<S: Clone> ContextualRetry<S> {
    /// Wraps `inner`. The configuration should be validated
    /// ([`RetryConfig::validate`]); [`ContextualRetryLayer::new`](super::ContextualRetryLayer::new) does.
    pub fn new(inner: S, config: Arc<RetryConfig>, budgets: Budgets) -> Self {
        let plain_success = OperationType::ALL.map(|op| {
            let p = config.policy(op);
            [&p.throttle_statuses, &p.timeout_statuses, &p.server_error_statuses]
                .iter()
                .all(|list| list.iter().all(|&s| s >= 400))
        });
        ContextualRetry {
            spare_service: Some(Arc::new(Shared {
                service: inner.clone(),
                config: config.clone(),
            })),
            inner,
            config,
            budgets,
            copy_from_below: false,
            share_key: false,
            plain_success,
        }
    }
}

impl<S> ContextualRetry<S> {
    /// The configuration.
    pub fn config(&self) -> &RetryConfig {
        &self.config
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably (resends use a copy of it as it is at the next call).
    pub fn get_mut(&mut self) -> &mut S {
        self.spare_service = None;
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResB> Service<Request<B>> for ContextualRetry<S>
where
    S: Service<Request<B>, Response = Response<ResB>> + Clone,
    S::Error: Into<BoxError>,
    B: CloneBody + 'static,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let operation = OperationType::of(&req);
        let policy = self.config.policy(operation);
        let has_key =
            req.headers().contains_key(&IDEMPOTENCY_KEY) || req.extensions().get::<IdempotencyKey>().is_some();
        let may_retry = policy.max_attempts > 1;
        let mut resendable = if req.method().is_idempotent() || has_key {
            Resendable::Yes
        } else {
            Resendable::No(NotResendable::UnsafeWithoutKey)
        };
        // The spare is copied before this layer adds its own extensions (the attempt number
        // and the cached partition): a resend sets its own number, and the layers below
        // compute its partition again. Fewer extensions make the copy, and dropping it
        // unused (nearly every time), cheaper.
        let spare = if !(may_retry && resendable == Resendable::Yes) {
            Spare::Own(None)
        } else if self.copy_from_below && can_hand_up::<B>() {
            // the redirect layer below hands its copy up when the attempt ends (`slot.rs`)
            Spare::Below(None)
        } else {
            let spare = clone_request(&req).map(Box::new);
            if spare.is_none() {
                resendable = Resendable::No(NotResendable::BodyNotCloneable);
            }
            Spare::Own(spare)
        };
        // The first attempt carries no number (absent means 1, `AttemptNumber::of`): a caller's
        // is removed rather than a 1 inserted, which saved an allocation per request here and
        // a boxed copy in the redirect layer's snapshot (`overhead_bench` row (e) and
        // `layer_cost stack` under callgrind).
        req.extensions_mut().remove::<AttemptNumber>();
        let started = Instant::now();
        // (shared with the stack's layers below rather than cached in the request: the copy
        // the redirect layer keeps for a resend then has one extension less to clone and drop)
        let key = self.share_key.then(|| PartitionKey::compute(&req));
        let budget = if may_retry && self.budgets.enabled() {
            match &key {
                Some(key) => self.budgets.get_at(key, started),
                None => self.budgets.get_at(&PartitionKey::of(&mut req), started),
            }
        } else {
            None
        };
        if let Some(budget) = &budget {
            budget.deposit();
        }
        let service = match &self.spare_service {
            Some(service) => Arc::clone(service),
            None => {
                let service = Arc::new(Shared {
                    service: self.inner.clone(),
                    config: self.config.clone(),
                });
                self.spare_service = Some(Arc::clone(&service));
                service
            }
        };
        // the layers below take the time just read instead of reading the clock again
        let future = {
            let _clock = crate::context::clock::share_with_key(started, key);
            self.inner.call(req)
        };
        let plan = Plan {
            operation,
            started,
            has_key,
            resendable,
            budget,
            plain_success: self.plain_success[operation as usize],
        };
        ResponseFuture::new(future, service, spare, plan)
    }
}
