//! [`TelemetryBody`]: the measuring response body.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::state::{End, Guard, Tracker};
use crate::error::BoxError;

pin_project! {
    /// A response body that counts the bytes streamed through it and the time to its first
    /// byte, and reports the request (span end, metrics, attempt record) when it ends, fails
    /// or is dropped. Frames pass through as they arrive: nothing is buffered.
    #[derive(Debug)]
    pub struct TelemetryBody<B> {
        #[pin]
        inner: B,
        guard: Guard,
    }
}

impl<B: Body> TelemetryBody<B> {
    pub(crate) fn new(inner: B, tracker: Option<Box<Tracker>>) -> Self {
        let mut guard = Guard::new(tracker);
        // (asked only when something is tracked: the body below is often boxed, and the
        // question is a dynamic call through every layer of it)
        if guard.get().is_some() && inner.is_end_stream() {
            // An empty body (HEAD, 204): nobody needs to poll it for it to be complete.
            if let Some(t) = guard.take() {
                t.finish(End::Complete);
            }
        }
        TelemetryBody { inner, guard }
    }
}

impl<B> TelemetryBody<B> {
    /// The body inside (the request is reported now, as if the body had been dropped).
    pub fn into_inner(self) -> B {
        self.inner
    }

    /// The body inside.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B> Body for TelemetryBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        match ready!(this.inner.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) => {
                if let Some(t) = this.guard.get_mut() {
                    if let Some(data) = frame.data_ref() {
                        t.on_data(data.remaining());
                    }
                }
                if this.guard.get().is_some() && this.inner.is_end_stream() {
                    if let Some(t) = this.guard.take() {
                        t.finish(End::Complete);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(err)) => {
                let err = err.into();
                if let Some(t) = this.guard.take() {
                    t.finish(End::Error(&err));
                }
                Poll::Ready(Some(Err(err)))
            }
            None => {
                if let Some(t) = this.guard.take() {
                    t.finish(End::Complete);
                }
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
