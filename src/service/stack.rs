//! [`Stack`]: the layers composed around the shared client, one service per operation.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use pin_project_lite::pin_project;
use tower::ServiceBuilder;
use tower_http::decompression::DecompressionLayer;

use super::{HttpClient, HttpConfig, RedirectLayer};
use crate::context::OperationType;
use crate::error::BoxError;
use crate::layers::idempotency::IdempotencyLayer;
use crate::layers::learning::{Learner, LearningPolicy, ProviderLearningLayer};
use crate::layers::rate_limit::{RateLimitConfig, RateLimitLayer, RateLimiter};
use crate::layers::retry::{ContextualRetryLayer, RetryConfig};
use crate::layers::retry_after::RetryAfterLayer;
use crate::layers::telemetry::{RecordWriter, TelemetryBody, TelemetryLayer, TelemetryMetrics};

/// The response body of a stack's service: type-erased once per response.
pub type PipelineBody = UnsyncBoxBody<Bytes, BoxError>;

/// A stack's service: type-erased, `Clone + Send + Sync`, cheap to clone.
pub type HttpService = tower::util::BoxCloneSyncService<Request<Full<Bytes>>, Response<PipelineBody>, BoxError>;

/// What goes into a [`Stack`]. Each `bool` is a feature gate: off leaves the layer out (or,
/// for contextual retry, gives every operation the standard retry policy).
#[derive(Clone, Debug)]
pub struct StackConfig {
    /// The shared client.
    pub http: HttpConfig,
    /// Gate: a retry policy per operation type (off: one standard policy).
    pub contextual_retry: bool,
    /// The per-operation retry policies used when `contextual_retry` is on.
    pub retry: RetryConfig,
    /// Gate: learn each partition's rate from its 429s (off: the configured rates stay).
    pub provider_learning: bool,
    /// The learning policy.
    pub learning_policy: LearningPolicy,
    /// Where learned state persists (loaded now; saved by the caller through [`Stack::learner`]).
    pub learning_path: Option<PathBuf>,
    /// Per-provider rates, the wait bound and the global in-flight cap.
    pub rate_limit: RateLimitConfig,
    /// The longest a request waits for a provider's cool-down before it fails with
    /// `CoolingDown` (default 5 s).
    pub cooldown_max_wait: Duration,
    /// Gate: idempotency keys and `Idempotency-Key` headers on unsafe methods.
    pub idempotency: bool,
    /// Metrics for the telemetry layers (spans are always emitted; they cost nothing
    /// when no subscriber listens). The learner's rates are published on its gauge.
    pub metrics: Option<TelemetryMetrics>,
    /// Where attempt records go.
    pub records: Option<RecordWriter>,
    /// The run id put on attempt records.
    pub run_id: Option<String>,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            http: HttpConfig::default(),
            contextual_retry: true,
            retry: RetryConfig::default(),
            provider_learning: true,
            learning_policy: LearningPolicy::default(),
            learning_path: None,
            rate_limit: RateLimitConfig::default(),
            cooldown_max_wait: Duration::from_secs(5),
            idempotency: true,
            metrics: None,
            records: None,
            run_id: None,
        }
    }
}

/// The download stack: every layer, in the order of the design (outer to inner):
///
/// telemetry (operation span) → idempotency → contextual retry → redirects → telemetry
/// (attempt span) → Retry-After cool-down → provider learning → rate limit (with the
/// per-host cap) → global in-flight cap → (decompression, for metadata operations) → the
/// shared client (User-Agent, timeouts).
///
/// Redirects are followed above the partition layers ([`RedirectLayer`], which follows them
/// the way tower-http's `FollowRedirect` with [`RedirectPolicy`](super::RedirectPolicy) does: at most `http.max_redirects` hops, http/https only, no credentials
/// across origins), so each hop is its own attempt to its own partition: a chain
/// `doi.org → publisher → CDN` takes a token of each host, a 429 from the CDN cools the
/// CDN, not doi.org, and the attempt records show every hop. A [`Provider`] extension names
/// the first request's host only; a hop to another host is partitioned by its host (see
/// [`RedirectPolicy`](super::RedirectPolicy)). The stack's client itself hands redirects back.
///
/// Waiting holds nothing: a request waiting for its partition's cool-down, token or
/// per-host slot carries an unready clone of the service below, which takes its global
/// in-flight permit only when the wait is over.
///
/// [`Provider`]: crate::context::Provider
///
/// One `Stack` holds the state every operation shares: the client's connection pool, the
/// rate limiter and its learner, the cool-downs and the retry budgets. [`service`](Stack::service)
/// hands out the service of one operation type; all of them share that state.
///
/// # Example
///
/// ```no_run
/// use contentdownload::context::OperationType;
/// use contentdownload::service::{Stack, StackConfig};
/// use tower::ServiceExt;
///
/// # async fn demo() -> Result<(), contentdownload::error::BoxError> {
/// let stack = Stack::new(&StackConfig::default())?;
/// let resolve = stack.service(OperationType::Resolve);
/// let req = http::Request::get("https://api.crossref.org/works/10.1000/x").body(Default::default())?;
/// let response = resolve.oneshot(req).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Stack {
    client: HttpClient,
    limiter: RateLimiter,
    learner: Option<Learner>,
    retry: ContextualRetryLayer,
    retry_after: RetryAfterLayer,
    redirects: RedirectLayer,
    idempotency: Option<IdempotencyLayer>,
    operation_telemetry: TelemetryLayer,
    attempt_telemetry: TelemetryLayer,
}

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("learning", &self.learner.is_some())
            .field("idempotency", &self.idempotency.is_some())
            .finish_non_exhaustive()
    }
}

/// The top of a stack's service: sets the operation type and type-erases the response body.
/// One service of ours rather than tower's `MapRequest` and `MapResponse`: each of those is
/// a layer of futures to build, move and poll on every request (the stack's whole future
/// was moved four times before it was boxed; ~150 instructions per request, `layer_cost
/// stack` under callgrind).
#[derive(Clone)]
struct Top<S> {
    inner: S,
    op: OperationType,
}

impl<S, B> tower::Service<Request<Full<Bytes>>> for Top<S>
where
    S: tower::Service<Request<Full<Bytes>>, Response = Response<TelemetryBody<TelemetryBody<B>>>, Error = BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<PipelineBody>;
    type Error = BoxError;
    type Future = TopFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<Full<Bytes>>) -> Self::Future {
        // An absent `OperationType` means `Download` to every reader (`OperationType::of`), so
        // the download service inserts nothing: one extension fewer to allocate, to copy for
        // the retry and redirect layers, and to drop, on the busiest path.
        if self.op != OperationType::Download && req.extensions().get::<OperationType>().is_none() {
            req.extensions_mut().insert(self.op);
        }
        TopFuture {
            inner: self.inner.call(req),
            _body: PhantomData,
        }
    }
}

pin_project! {
    /// Response future of [`Top`].
    struct TopFuture<F, B> {
        #[pin]
        inner: F,
        _body: PhantomData<fn() -> B>,
    }
}

impl<F, B> Future for TopFuture<F, B>
where
    F: Future<Output = Result<Response<TelemetryBody<TelemetryBody<B>>>, BoxError>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<PipelineBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project()
            .inner
            .poll(cx)
            .map_ok(|r| r.map(|b| b.map_err(Into::into).boxed_unsync()))
    }
}

impl Stack {
    /// Builds the client and the shared state. Errors name the setting that is wrong.
    pub fn new(config: &StackConfig) -> Result<Stack, BoxError> {
        let client = HttpClient::without_redirects(&config.http)?;
        let redirects = RedirectLayer::new(config.http.max_redirects);
        let limiter = RateLimiter::new(config.rate_limit.clone())?;
        let learner = match (config.provider_learning, &config.learning_path) {
            (false, _) => None,
            (true, Some(path)) => Some(Learner::with_persistence(
                limiter.clone(),
                config.learning_policy,
                path.clone(),
            )?),
            (true, None) => Some(Learner::new(limiter.clone(), config.learning_policy)?),
        };
        let retry = if config.contextual_retry {
            ContextualRetryLayer::new(config.retry.clone())?
        } else {
            ContextualRetryLayer::standard()
        };
        let mut operation_telemetry = TelemetryLayer::operation();
        let mut attempt_telemetry = TelemetryLayer::attempt();
        if let Some(metrics) = &config.metrics {
            operation_telemetry = operation_telemetry.metrics(metrics.clone());
            attempt_telemetry = attempt_telemetry.metrics(metrics.clone());
            if let Some(learner) = &learner {
                let learner = learner.clone();
                metrics.register_rate_source(move || {
                    learner.statuses().into_iter().map(|s| (s.partition, s.rate)).collect()
                });
            }
        }
        if let Some(records) = &config.records {
            attempt_telemetry = attempt_telemetry.records(records.clone());
        }
        if let Some(run_id) = &config.run_id {
            operation_telemetry = operation_telemetry.run_id(run_id.as_str());
            attempt_telemetry = attempt_telemetry.run_id(run_id.as_str());
        }
        Ok(Stack {
            operation_telemetry,
            attempt_telemetry,
            client,
            limiter,
            learner,
            retry,
            redirects,
            retry_after: RetryAfterLayer::new().max_wait(config.cooldown_max_wait),
            idempotency: config.idempotency.then(IdempotencyLayer::new),
        })
    }

    /// The service for one operation type. Requests that carry no [`OperationType`] get
    /// `op` (for [`OperationType::Download`], the default, nothing is inserted: an absent
    /// operation type means `Download`); metadata operations (all but `Download`) also decompress gzip/deflate bodies.
    pub fn service(&self, op: OperationType) -> HttpService {
        // Two stacks of different types rather than one over an `Either` of the two bottoms:
        // with the `Either`, every download's response body and futures were as large as
        // the decompressing ones (a gzip decoder's state), and each layer moved them on the
        // way up (`overhead_bench` row (b) under callgrind: ~3k instructions of memcpy per
        // request more than the bare client).
        if op == OperationType::Download {
            self.compose(op, self.client.direct())
        } else {
            self.compose(
                op,
                tower::Layer::layer(&DecompressionLayer::new(), self.client.direct()),
            )
        }
    }

    /// The service for one operation type with every layer of the stack around `inner`
    /// instead of the shared client: how adapters (for example the reqwest middleware) send
    /// through another client while sharing this stack's limiter, learner, cool-downs and
    /// budgets. `inner` gets no decompression. The stack's redirect layer follows the
    /// redirects `inner` hands back, each hop through the partition layers; an `inner` that
    /// follows redirects itself hides its hops from them. `inner`'s response body may be
    /// any body of `Bytes`: it is type-erased once, at the top of the stack (an `inner` that
    /// boxed it first would add a box and a layer of polling to every frame). The requests
    /// `inner` gets carry no [`PartitionKey`](crate::context::PartitionKey) extension on a
    /// first attempt (the stack's layers share it while they call down instead); compute it
    /// with [`PartitionKey::compute`](crate::context::PartitionKey::compute) if needed.
    pub fn service_with<S, B>(&self, op: OperationType, inner: S) -> HttpService
    where
        S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.compose(op, inner)
    }

    fn compose<S, B>(&self, op: OperationType, bottom: S) -> HttpService
    where
        S: tower::Service<Request<Full<Bytes>>, Response = Response<B>, Error = BoxError>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let svc = ServiceBuilder::new()
            .layer(self.operation_telemetry.clone())
            .option_layer(self.idempotency.clone())
            // (the retry layer resends from the copy the redirect layer directly below keeps)
            // (the retry layer shares each request's partition key with the three partition
            // layers below, which take it: `context::clock`)
            .layer(self.retry.clone().with_copy_from_below().with_key_shared())
            .layer(self.redirects.with_copy_handed_up())
            .layer(self.attempt_telemetry.clone())
            .layer(self.retry_after.clone().with_call_key())
            .option_layer(
                self.learner
                    .clone()
                    .map(|learner| ProviderLearningLayer::new(learner).with_call_key()),
            )
            .layer(RateLimitLayer::new(self.limiter.clone()).with_call_key())
            .option_layer(self.limiter.global_concurrency_layer())
            .service(bottom);
        HttpService::new(Top { inner: svc, op })
    }

    /// The shared client (its pool is shared by every service of the stack). It does not
    /// follow redirects: the stack's redirect layer does, above the partition layers.
    pub fn client(&self) -> &HttpClient {
        &self.client
    }

    /// The rate limiter every service shares.
    pub fn limiter(&self) -> &RateLimiter {
        &self.limiter
    }

    /// The cool-downs every service shares (partitions told to wait by a 429 or 503).
    pub fn cooldowns(&self) -> &crate::layers::retry_after::Cooldowns {
        self.retry_after.cooldowns()
    }

    /// The learner, when provider learning is on; persist it at shutdown.
    pub fn learner(&self) -> Option<&Learner> {
        self.learner.as_ref()
    }
}
