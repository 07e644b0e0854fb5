//! [`Reply`]: one scripted answer of the simulator.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// How the body of a [`Reply`] is produced.
#[derive(Clone, Debug)]
pub enum BodySpec {
    /// The given bytes, with a matching `Content-Length`.
    Bytes(Bytes),
    /// `len` bytes streamed in chunks of `chunk` bytes (filled with `fill`), with a
    /// matching `Content-Length`. Nothing of size `len` is ever held in memory.
    Stream {
        /// Total length.
        len: u64,
        /// Chunk size (at least 1).
        chunk: usize,
        /// The byte every position holds.
        fill: u8,
    },
    /// `Content-Length: declared`, then only `sent` bytes of a PDF (`%PDF-1.7` and filler),
    /// then the connection is closed: the client sees an incomplete body.
    Truncated {
        /// The length announced in the header.
        declared: u64,
        /// The bytes actually sent.
        sent: u64,
    },
    /// `sent` bytes of a longer body (chunked), then the connection is aborted.
    ResetAfter {
        /// The bytes sent before the abort.
        sent: u64,
    },
    /// A well-formed PDF-looking payload of exactly `len` bytes (at least 64): `%PDF-1.7`,
    /// filler streamed in 64 KiB chunks, then `%%EOF`. Passes the payload checks when
    /// `len` >= 1 KiB.
    Pdf {
        /// Total length.
        len: u64,
    },
    /// `sent` bytes (chunked) of a PDF that never ends (`%PDF-1.7` when `sent` leaves room
    /// for it, then filler), then nothing more, ever: the connection stays open and idle.
    StallAfter {
        /// The bytes sent before the stall.
        sent: u64,
    },
}

/// One scripted answer: status, headers, body and an optional delay before the head is
/// sent.
///
/// ```
/// use contentdownload::simulator::Reply;
/// use std::time::Duration;
///
/// let throttled = Reply::status(429).retry_after_secs(2);
/// let slow_pdf = Reply::ok().header("content-type", "application/pdf").stream(10 << 20).delay(Duration::from_millis(50));
/// # let _ = (throttled, slow_pdf);
/// ```
#[derive(Clone, Debug)]
pub struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: Vec<(HeaderName, HeaderValue)>,
    pub(crate) body: BodySpec,
    pub(crate) delay: Option<Duration>,
    pub(crate) stall_head: bool,
}

impl Reply {
    /// A reply with this status and an empty body. An invalid code becomes 500.
    pub fn status(code: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            headers: Vec::new(),
            body: BodySpec::Bytes(Bytes::new()),
            delay: None,
            stall_head: false,
        }
    }

    /// `200 OK` with an empty body.
    pub fn ok() -> Reply {
        Reply::status(200)
    }

    /// A redirect (`code` should be 301, 302, 303, 307 or 308) to `location`.
    pub fn redirect(code: u16, location: &str) -> Reply {
        Reply::status(code).header("location", location)
    }

    /// `200 OK` with a JSON body.
    pub fn json(value: &serde_json::Value) -> Reply {
        Reply::ok()
            .header("content-type", "application/json")
            .body(serde_json::to_vec(value).unwrap_or_default())
    }

    /// Adds a header. A name or value that is not valid in HTTP is skipped (this is a test
    /// tool: check the recorded response if it matters).
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) {
            self.headers.push((n, v));
        }
        self
    }

    /// `Retry-After: <secs>` (delta-seconds form).
    pub fn retry_after_secs(self, secs: u64) -> Reply {
        self.header("retry-after", &secs.to_string())
    }

    /// `Retry-After: <HTTP-date>` (IMF-fixdate form) for the given instant.
    pub fn retry_after_date(self, at: SystemTime) -> Reply {
        self.header("retry-after", &httpdate::fmt_http_date(at))
    }

    /// The body bytes (`Content-Length` set to match).
    pub fn body(mut self, body: impl Into<Bytes>) -> Reply {
        self.body = BodySpec::Bytes(body.into());
        self
    }

    /// A streamed body of `len` bytes of `b'x'` in 64 KiB chunks.
    pub fn stream(self, len: u64) -> Reply {
        self.body_spec(BodySpec::Stream {
            len,
            chunk: 64 * 1024,
            fill: b'x',
        })
    }

    /// A PDF-looking body of `len` bytes (see [`BodySpec::Pdf`]) with
    /// `Content-Type: application/pdf`.
    pub fn pdf(len: u64) -> Reply {
        Reply::ok()
            .header("content-type", "application/pdf")
            .body_spec(BodySpec::Pdf { len })
    }

    /// Any [`BodySpec`].
    pub fn body_spec(mut self, spec: BodySpec) -> Reply {
        self.body = spec;
        self
    }

    /// Waits this long (on the tokio clock) before sending the response head.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = Some(delay);
        self
    }

    /// Never sends the response head: the request hangs until the client gives up.
    pub fn stall(mut self) -> Reply {
        self.stall_head = true;
        self
    }

    /// The status code.
    pub fn status_code(&self) -> StatusCode {
        self.status
    }
}
