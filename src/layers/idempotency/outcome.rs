//! What the layer records in the ledger, and what it tells the caller.

use std::sync::Arc;

use http::{header, Response, StatusCode};

use super::store::{JobId, JobResult, JobState};
use crate::context::IdempotencyKey;
use crate::error::{BoxError, CoolingDown, Deferred, RateLimitTimeout};

/// Response extension: the ledger job this response belongs to, and the state the layer
/// left it in: FINALIZED (2xx), FAILED or DEFERRED (other statuses), or LEASED when
/// [`finalize_on_response(false)`](super::IdempotencyLayer::finalize_on_response) leaves
/// finishing to the caller, who then calls
/// [`ClaimStore::complete`](super::ClaimStore::complete)`(job, owner, ...)` (for the
/// ledger, `Ledger::finish`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerJob {
    /// The job.
    pub job: JobId,
    /// Its key.
    pub key: IdempotencyKey,
    /// The worker that holds (or held) its lease.
    pub owner: Arc<str>,
    /// The state the layer left it in.
    pub state: JobState,
}

/// The longest reason the layer records for an error.
const MAX_REASON: usize = 500;

/// The state and result a response leads to: 2xx → FINALIZED; 408, 429, 503 → DEFERRED
/// (the provider asked for time); anything else → FAILED.
pub(crate) fn of_response<B>(res: &Response<B>) -> (JobState, JobResult) {
    let status = res.status();
    let state = if status.is_success() {
        JobState::Finalized
    } else if matches!(
        status,
        StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        JobState::Deferred
    } else {
        JobState::Failed
    };
    let bytes = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    let result = JobResult {
        outcome: Some(format!("http_{}", status.as_u16())),
        bytes,
        reason: (state != JobState::Finalized).then(|| format!("HTTP {status}")),
        ..JobResult::default()
    };
    (state, result)
}

/// The state and result an error leads to: the retry layer's [`Deferred`] and the waits that
/// were too long ([`CoolingDown`], [`RateLimitTimeout`]) → DEFERRED; anything else → FAILED.
pub(crate) fn of_error(err: &BoxError) -> (JobState, JobResult) {
    let deferred = err.is::<Deferred>() || err.is::<CoolingDown>() || err.is::<RateLimitTimeout>();
    let mut reason = err.to_string();
    if reason.len() > MAX_REASON {
        let mut end = MAX_REASON;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    let state = if deferred { JobState::Deferred } else { JobState::Failed };
    let result = JobResult {
        outcome: Some(if deferred { "deferred" } else { "error" }.to_owned()),
        reason: Some(reason),
        ..JobResult::default()
    };
    (state, result)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::OperationType;

    #[test]
    fn statuses_and_errors_map_to_states() {
        let res = |code: u16| Response::builder().status(code).body(()).unwrap();
        assert_eq!(of_response(&res(200)).0, JobState::Finalized);
        assert_eq!(of_response(&res(429)).0, JobState::Deferred);
        assert_eq!(of_response(&res(404)).0, JobState::Failed);
        assert_eq!(of_response(&res(404)).1.reason.as_deref(), Some("HTTP 404 Not Found"));
        let d: BoxError = Box::new(Deferred {
            operation: OperationType::Validate,
            status: None,
            retry_after: None,
            attempts: 1,
            reason: "429".into(),
        });
        assert_eq!(of_error(&d).0, JobState::Deferred);
        let long: BoxError = "é".repeat(400).into();
        let (st, r) = of_error(&long);
        assert_eq!(st, JobState::Failed);
        assert!(r.reason.unwrap().len() <= MAX_REASON);
    }
}
