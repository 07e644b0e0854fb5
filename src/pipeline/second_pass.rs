//! When the deferred works get their second attempt.
//!
//! A work is deferred because a provider asked for a pause (a 429 with Retry-After, a
//! cool-down, a rate-limit wait longer than allowed). Asking again at once only meets the
//! same pause, so the second pass takes the deferred works in order of their provider's
//! hint and waits for each hint to pass, but never past a maximum counted from the start of
//! the pass; a work whose hint lies beyond it stays deferred (in the ledger too) for the
//! next run. A host's pause covers all its works, as the Retry-After layer's cool-down
//! covers its partition: a work waits for the latest hint its host gave to any work. The
//! timing is computed here, apart from the waiting, so that it can be tested without a
//! clock.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::fallback::DeferredBy;

/// The latest moment each source asked to be left alone until, over every work of the run.
#[derive(Debug, Default)]
pub(crate) struct SourceHints(HashMap<String, Instant>);

impl SourceHints {
    /// Notes a work's deferrals; a later hint of a source replaces an earlier one.
    pub(crate) fn note(&mut self, by: &[DeferredBy]) {
        for d in by {
            if let Some(at) = d.retry_at {
                let entry = self.0.entry(d.source.clone()).or_insert(at);
                *entry = (*entry).max(at);
            }
        }
    }

    /// When a work deferred by `by` may expect one of its sources back: the earliest among
    /// them, each at the latest hint its source gave. `None` when one of them gave no hint
    /// (or nothing is known).
    pub(crate) fn work_hint(&self, by: &[DeferredBy]) -> Option<Instant> {
        let mut earliest: Option<Instant> = None;
        for d in by {
            let at = self.0.get(&d.source).copied().max(d.retry_at)?;
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        earliest
    }
}

/// How long the second pass waits for a work whose provider gave no hint (bounded by the
/// maximum wait).
pub const NO_HINT_WAIT: Duration = Duration::from_secs(1);

/// The default bound on the second pass's wait (`--second-pass-max-wait`).
pub const DEFAULT_SECOND_PASS_MAX_WAIT: Duration = Duration::from_secs(60);

/// When a deferred work gets its second attempt, for a pass that starts at `start`: when its
/// provider's hint has passed (`hint`), or [`NO_HINT_WAIT`] after `start` when there is no
/// hint; never before `start`. `None` when that moment is more than `max_wait` after `start`:
/// the work stays deferred. A `max_wait` of zero waits for nothing: only works whose hint
/// has already passed, or that have none, are tried again.
pub(crate) fn second_attempt_at(start: Instant, hint: Option<Instant>, max_wait: Duration) -> Option<Instant> {
    let at = match hint {
        Some(at) => at.max(start),
        None => start.checked_add(NO_HINT_WAIT.min(max_wait)).unwrap_or(start),
    };
    // a bound too far to represent is no bound
    let within = start.checked_add(max_wait).is_none_or(|end| at <= end);
    within.then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_hint_is_waited_for_when_within_the_bound() {
        let start = Instant::now();
        assert_eq!(
            second_attempt_at(start, Some(start + S(30)), S(60)),
            Some(start + S(30))
        );
        assert_eq!(
            second_attempt_at(start, Some(start + S(60)), S(60)),
            Some(start + S(60))
        );
        assert_eq!(
            second_attempt_at(start, Some(start + S(61)), S(60)),
            None,
            "beyond the bound"
        );
        // a hint that passed during the first pass: at once
        assert_eq!(second_attempt_at(start + S(5), Some(start), S(60)), Some(start + S(5)));
    }

    #[test]
    fn no_hint_waits_a_little_and_zero_waits_for_nothing() {
        let start = Instant::now();
        assert_eq!(second_attempt_at(start, None, S(60)), Some(start + NO_HINT_WAIT));
        assert_eq!(
            second_attempt_at(start, None, Duration::from_millis(200)),
            Some(start + Duration::from_millis(200))
        );
        assert_eq!(second_attempt_at(start, None, Duration::ZERO), Some(start));
        assert_eq!(second_attempt_at(start, Some(start + S(1)), Duration::ZERO), None);
        assert_eq!(
            second_attempt_at(start + S(1), Some(start), Duration::ZERO),
            Some(start + S(1))
        );
    }

    #[test]
    fn a_work_waits_for_its_hosts_latest_hint() {
        let now = Instant::now();
        let by = |source: &str, secs: Option<u64>| DeferredBy {
            source: source.into(),
            retry_at: secs.map(|s| now + S(s)),
        };
        let mut hints = SourceHints::default();
        hints.note(&[by("a", Some(70))]);
        hints.note(&[by("a", Some(400)), by("b", Some(20))]);
        hints.note(&[by("a", Some(100))]);
        // the host's latest hint, not the work's own
        assert_eq!(hints.work_hint(&[by("a", Some(70))]), Some(now + S(400)));
        // the earliest of the work's sources
        assert_eq!(
            hints.work_hint(&[by("a", Some(70)), by("b", Some(20))]),
            Some(now + S(20))
        );
        // a source that gave no hint: none for the work
        assert_eq!(hints.work_hint(&[by("b", Some(20)), by("c", None)]), None);
        assert_eq!(hints.work_hint(&[]), None);
    }

    #[test]
    fn a_huge_bound_does_not_overflow() {
        let start = Instant::now();
        let max = Duration::from_secs(u64::MAX);
        assert_eq!(
            second_attempt_at(start, Some(start + S(900)), max),
            Some(start + S(900))
        );
        assert_eq!(second_attempt_at(start, None, max), Some(start + NO_HINT_WAIT));
    }
}
