//! Response bodies: streamed, with an idle timeout; and a bounded reader for metadata.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::error::{BodyTooLarge, ReadTimeout};
use crate::error::BoxError;

/// The body of a response from the shared client: hyper's streaming body, failing with
/// [`ReadTimeout`] when no frame arrives within the idle read timeout. Nothing is buffered:
/// frames reach the caller as they arrive. It is `Unpin`, so `body.frame().await` works
/// as it is.
///
/// (tower-http's `TimeoutBody` does the same but is not `Unpin` and allocates nothing we
/// could reuse; this one boxes its timer once per response and resets it.)
#[derive(Debug)]
pub struct ResponseBody {
    inner: Incoming,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl ResponseBody {
    pub(crate) fn new(inner: Incoming, timeout: Duration) -> Self {
        ResponseBody {
            inner,
            timeout,
            sleep: None,
            armed: false,
        }
    }

    /// The hyper body inside, without the idle timeout.
    pub fn into_inner(self) -> Incoming {
        self.inner
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = Instant::now() + this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !this.armed {
            sleep.as_mut().reset(deadline);
            this.armed = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.armed = false;
                Poll::Ready(Some(Err(Box::new(ReadTimeout { after: this.timeout }))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a metadata response (JSON, HTML) into memory, refusing one larger than `limit`
/// bytes with [`BodyTooLarge`]: up front when `Content-Length` says so, otherwise as soon as
/// the limit is crossed. Payloads (PDFs) should be streamed instead.
///
/// # Example
///
/// ```
/// # async fn demo() -> Result<(), contentdownload::error::BoxError> {
/// use contentdownload::service::read_metadata;
/// let response = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")));
/// let bytes = read_metadata(response, 1024).await?;
/// assert_eq!(&bytes[..], b"{}");
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(demo()).unwrap();
/// ```
pub async fn read_metadata<B>(response: Response<B>, limit: usize) -> Result<Bytes, BoxError>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Box::new(BodyTooLarge { limit }));
    }
    match Limited::new(response.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(Box::new(BodyTooLarge { limit })),
        Err(e) => Err(e),
    }
}
