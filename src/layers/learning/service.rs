//! [`ProviderLearning`].

use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower_service::Service;

use super::future::ResponseFuture;
use super::Learner;
use crate::context::PartitionKey;

/// Shows every response to the [`Learner`] for the request's partition
/// ([`PartitionKey::of`]). Adds no failure mode: errors pass through untouched and teach
/// nothing.
///
/// Clones share the learner.
#[derive(Debug, Clone)]
pub struct ProviderLearning<S> {
    inner: S,
    learner: Learner,
}

impl<S> ProviderLearning<S> {
    /// Wraps `inner`, feeding `learner`.
    pub fn new(inner: S, learner: Learner) -> Self {
        ProviderLearning { inner, learner }
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
        let key = PartitionKey::of(&mut req);
        let sent_at = Instant::now();
        ResponseFuture::new(self.inner.call(req), self.learner.clone(), key, sent_at)
    }
}
