//! The simulator's response body.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::reply::BodySpec;
use crate::error::BoxError;

/// The simulator aborted the body on purpose (a scripted reset or truncation).
#[derive(Debug, thiserror::Error)]
#[error("simulator: scripted connection abort")]
pub(crate) struct ScriptedAbort;

enum End {
    Finish,
    /// Yield once (so hyper flushes what it has), then fail.
    Abort,
    Aborting,
    Stall,
}

pub(crate) struct SimBody {
    prefix: Option<Bytes>,
    suffix: Option<Bytes>,
    chunk: Bytes,
    remaining: u64,
    end: End,
    exact: Option<u64>,
    sent: Arc<AtomicU64>,
}

impl SimBody {
    pub(crate) fn new(spec: &BodySpec, sent: Arc<AtomicU64>) -> (SimBody, Option<u64>) {
        let (mut prefix, mut suffix) = (None, None);
        let (chunk, remaining, end, declared) = match spec {
            BodySpec::Pdf { len } => {
                let len = (*len).max(64);
                let head = Bytes::from_static(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n");
                let tail = Bytes::from_static(b"\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n");
                let filler = len - head.len() as u64 - tail.len() as u64;
                prefix = Some(head);
                suffix = Some(tail);
                (filled(64 * 1024, b'0'), filler, End::Finish, Some(len))
            }
            BodySpec::Bytes(b) => (b.clone(), b.len() as u64, End::Finish, Some(b.len() as u64)),
            BodySpec::Stream { len, chunk, fill } => (filled(*chunk, *fill), *len, End::Finish, Some(*len)),
            BodySpec::Truncated { declared, sent } => {
                // a PDF that is cut: its head, then filler, then the connection drops
                let head = Bytes::from_static(b"%PDF-1.7\n");
                let sent = (*sent).max(head.len() as u64);
                prefix = Some(head.clone());
                (
                    filled(64 * 1024, b'0'),
                    sent - head.len() as u64,
                    End::Abort,
                    Some(*declared),
                )
            }
            BodySpec::ResetAfter { sent } => (filled(64 * 1024, b'x'), *sent, End::Abort, None),
            BodySpec::StallAfter { sent } => {
                // the head of a PDF (when there is room for it), then filler
                let head = Bytes::from_static(b"%PDF-1.7\n");
                if *sent >= head.len() as u64 {
                    prefix = Some(head.clone());
                }
                let rest = sent - prefix.as_ref().map_or(0, |h| h.len() as u64);
                (filled(64 * 1024, b'0'), rest, End::Stall, None)
            }
        };
        let exact = match (&end, declared) {
            (End::Finish, Some(len)) => Some(len),
            _ => None,
        };
        (
            SimBody {
                prefix,
                suffix,
                chunk,
                remaining,
                end,
                exact,
                sent,
            },
            declared,
        )
    }
}

fn filled(chunk: usize, fill: u8) -> Bytes {
    Bytes::from(vec![fill; chunk.max(1)])
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take() {
            this.sent.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        if this.remaining > 0 {
            let n = (this.chunk.len() as u64).min(this.remaining) as usize;
            this.remaining -= n as u64;
            this.sent.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))));
        }
        if let Some(suffix) = this.suffix.take() {
            this.sent.fetch_add(suffix.len() as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(suffix))));
        }
        match this.end {
            End::Finish => Poll::Ready(None),
            End::Abort => {
                this.end = End::Aborting;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            End::Aborting => Poll::Ready(Some(Err(Box::new(ScriptedAbort)))),
            // Never woken: the connection stays open with nothing to send.
            End::Stall => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.suffix.is_none() && self.remaining == 0 && matches!(self.end, End::Finish)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.exact, &self.end) {
            (Some(_), End::Finish) => {
                let extra = self.prefix.as_ref().map_or(0, Bytes::len) + self.suffix.as_ref().map_or(0, Bytes::len);
                SizeHint::with_exact(self.remaining + extra as u64)
            }
            _ => SizeHint::default(),
        }
    }
}
