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
    /// partition's [`LearnedRate`] to it when the response changed it).
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
            let (rate, changed) = this.learner.observe_change(this.key, *this.sent_at, response);
            // Only when it changed: attached to every response, it cost a boxed extension
            // (and often the response's extension map) per request for a rate that nearly
            // always stays (`layer_cost` under callgrind, release with LTO: `learning` 5,875 → 5,227
            // and `stack` 10,420 → 9,769 instructions per request).
            if changed {
                response.extensions_mut().insert(LearnedRate(rate));
            }
            // The attempt span (telemetry's attempt layer above polls this future inside
            // it) gets the rate after every response, when anything listens.
            if !crate::layers::telemetry::tracing_is_silent() {
                tracing::Span::current().record("contentdownload.learning.rate", rate);
            }
        }
        Poll::Ready(result)
    }
}
