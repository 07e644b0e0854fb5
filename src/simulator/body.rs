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
    Abort,
    Stall,
}

pub(crate) struct SimBody {
    chunk: Bytes,
    remaining: u64,
    end: End,
    exact: Option<u64>,
    sent: Arc<AtomicU64>,
}

impl SimBody {
    pub(crate) fn new(spec: &BodySpec, sent: Arc<AtomicU64>) -> (SimBody, Option<u64>) {
        let (chunk, remaining, end, declared) = match spec {
            BodySpec::Bytes(b) => (b.clone(), b.len() as u64, End::Finish, Some(b.len() as u64)),
            BodySpec::Stream { len, chunk, fill } => (filled(*chunk, *fill), *len, End::Finish, Some(*len)),
            BodySpec::Truncated { declared, sent } => (filled(64 * 1024, b'x'), *sent, End::Abort, Some(*declared)),
            BodySpec::ResetAfter { sent } => (filled(64 * 1024, b'x'), *sent, End::Abort, None),
            BodySpec::StallAfter { sent } => (filled(64 * 1024, b'x'), *sent, End::Stall, None),
        };
        let exact = match (&end, declared) {
            (End::Finish, Some(len)) => Some(len),
            _ => None,
        };
        (
            SimBody {
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

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining > 0 {
            let n = (this.chunk.len() as u64).min(this.remaining) as usize;
            this.remaining -= n as u64;
            this.sent.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Some(Ok(Frame::data(this.chunk.slice(..n)))));
        }
        match this.end {
            End::Finish => Poll::Ready(None),
            End::Abort => Poll::Ready(Some(Err(Box::new(ScriptedAbort)))),
            // Never woken: the connection stays open with nothing to send.
            End::Stall => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && matches!(self.end, End::Finish)
    }

    fn size_hint(&self) -> SizeHint {
        match (self.exact, &self.end) {
            (Some(_), End::Finish) => SizeHint::with_exact(self.remaining),
            _ => SizeHint::default(),
        }
    }
}
