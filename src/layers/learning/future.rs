//! Future types.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;
use tokio::time::Instant;

use super::{LearnedRate, Learner};
use crate::context::PartitionKey;

pin_project! {
    /// Response future of [`ProviderLearning`](super::ProviderLearning): passes the inner
    /// result through after showing a response to the learner (and attaching the
    /// partition's [`LearnedRate`] to it).
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        learner: Learner,
        key: PartitionKey,
        sent_at: Instant,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, learner: Learner, key: PartitionKey, sent_at: Instant) -> Self {
        ResponseFuture {
            inner,
            learner,
            key,
            sent_at,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut result = ready!(this.inner.poll(cx));
        if let Ok(response) = &mut result {
            let rate = this.learner.observe(this.key, *this.sent_at, response);
            response.extensions_mut().insert(LearnedRate(rate));
        }
        Poll::Ready(result)
    }
}
