//! [`ProviderLearning`].

use std::task::{Context, Poll};

use http::{Request, Response};
use tower_service::Service;

use super::future::ResponseFuture;
use super::Learner;
use crate::context::PartitionKey;

/// Shows every response to the [`Learner`] for the request's partition
/// ([`PartitionKey::of`]) and attaches the partition's [`LearnedRate`](super::LearnedRate)
/// to it. Adds no failure mode: errors pass through untouched and teach nothing.
///
/// Clones share the learner.
#[derive(Debug, Clone)]
pub struct ProviderLearning<S> {
    inner: S,
    learner: Learner,
    /// Take the key the stack's retry layer shares (`ProviderLearningLayer::with_call_key`).
    pub(super) call_key: bool,
}

impl<S> ProviderLearning<S> {
    /// Wraps `inner`, feeding `learner`.
    pub fn new(inner: S, learner: Learner) -> Self {
        ProviderLearning {
            inner,
            learner,
            call_key: false,
        }
    }

    /// The learner.
    pub fn learner(&self) -> &Learner {
        &self.learner
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for ProviderLearning<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let key = PartitionKey::of_call(&mut req, self.call_key);
        let sent_at = crate::context::clock::now();
        ResponseFuture::new(self.inner.call(req), self.learner.clone(), key, sent_at)
    }
}

#[cfg(test)]
mod tests {
    use tokio_test::{assert_pending, assert_ready_ok};
    use tower_test::mock;

    use super::*;
    use crate::context::Provider;
    use crate::layers::learning::{LearnedRate, LearningPolicy, Phase, ProviderLearningLayer};
    use crate::layers::rate_limit::{Quota, RateLimitConfig, RateLimiter};

    fn learner() -> Learner {
        let limiter = RateLimiter::new(RateLimitConfig {
            default: Quota::new(10.0, 1),
            ..RateLimitConfig::default()
        })
        .unwrap();
        Learner::new(limiter, LearningPolicy::default()).unwrap()
    }

    fn req() -> Request<&'static str> {
        Request::get("https://api.crossref.org/works")
            .extension(Provider::new("crossref"))
            .body("q")
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_lowers_the_rate_and_the_response_says_so() {
        let learner = learner();
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request<&str>, Response<()>, _>(ProviderLearningLayer::new(learner.clone()));
        assert_ready_ok!(svc.poll_ready());
        let mut fut = tokio_test::task::spawn(svc.call(req()));
        assert_pending!(fut.poll());
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(
            request.extensions().get::<PartitionKey>().unwrap().provider().as_str(),
            "crossref"
        );
        send.send_response(Response::builder().status(429).body(()).unwrap());
        let res = fut.await.unwrap();
        assert_eq!(res.extensions().get::<LearnedRate>(), Some(&LearnedRate(7.0)));
        let status = learner.status("crossref", "api.crossref.org").unwrap();
        assert_eq!(status.phase, Phase::Reducing);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_that_changes_no_rate_carries_no_learned_rate() {
        let learner = learner();
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request<&str>, Response<()>, _>(ProviderLearningLayer::new(learner.clone()));
        assert_ready_ok!(svc.poll_ready());
        let fut = tokio_test::task::spawn(svc.call(req()));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(()));
        let res = fut.await.unwrap();
        assert_eq!(res.extensions().get::<LearnedRate>(), None);
        assert_eq!(learner.rate(&PartitionKey::new("crossref", "api.crossref.org")), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_pass_through_and_teach_nothing() {
        let learner = learner();
        let (mut svc, mut handle) =
            mock::spawn_layer::<Request<&str>, Response<()>, _>(ProviderLearningLayer::new(learner.clone()));
        assert_ready_ok!(svc.poll_ready());
        let fut = tokio_test::task::spawn(svc.call(req()));
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(*request.body(), "q");
        send.send_error(std::io::Error::other("connection reset"));
        assert!(fut.await.unwrap_err().to_string().contains("connection reset"));
        assert!(learner.statuses().is_empty());
    }
}
