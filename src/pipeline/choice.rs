//! Which PDF wins within a tier ([`Choice`]): when several candidates of a tier give a valid
//! PDF, the winner is the best ranked, not the first to finish.
//!
//! A candidate's rank, best first:
//! 1. the publisher's version over a repository or index copy: the candidates of
//!    [`PUBLISHER_SOURCES`] (links the publisher deposited, its landing page's PDF, the
//!    journal's full text) come before every other;
//! 2. the order of its resolver in the tier (`--fallback-tier a=r1,r2`: `r1` first);
//! 3. its place in its resolver's answer (resolvers answer best first).
//!
//! Tiers themselves are tried in order, so a PDF from an earlier tier always wins. A valid
//! PDF is kept (staged in `.partial/`) until no candidate that could rank better is still
//! pending (a resolver not yet answered, a candidate queued or downloading), but for at most
//! [`WAIT_FOR_BETTER`]: a better-ranked source that stalls does not cost the work the PDF in
//! hand (then, and only then, the choice depends on timing). The losers' staged files are
//! deleted.

use std::time::Duration;

use crate::download::Staged;
use crate::works::Candidate;

/// The resolvers whose candidates are the publisher's own copy: Crossref's links (deposited
/// by the publisher), the DOI landing page's `citation_pdf_url`, and DOAJ's full-text link
/// (the journal's site). Every other source is a repository, preprint server, index or
/// archive copy.
pub const PUBLISHER_SOURCES: [&str; 3] = ["crossref", "landing", "doaj"];

/// How long a valid PDF waits for better-ranked candidates still pending before it is taken.
pub const WAIT_FOR_BETTER: Duration = Duration::from_secs(10);

/// A candidate's rank in its tier, smaller first: (0 for a publisher's copy, else 1;
/// its resolver's place in the tier; its place in the resolver's answer).
pub(super) type Rank = (u8, usize, usize);

fn class(resolver: &str) -> u8 {
    u8::from(!PUBLISHER_SOURCES.contains(&resolver))
}

/// One tier's candidates on their way: pending, downloading, and staged (valid, waiting
/// for the better-ranked ones to end).
pub(super) struct Choice {
    resolvers: Vec<&'static str>,
    unanswered: Vec<bool>,
    queued: Vec<(Rank, Candidate)>,
    in_flight: Vec<Rank>,
    staged: Vec<(Rank, Staged, Candidate)>,
}

impl Choice {
    /// A tier whose resolvers are `resolvers`, in order.
    pub(super) fn new(resolvers: Vec<&'static str>) -> Choice {
        Choice {
            unanswered: vec![true; resolvers.len()],
            resolvers,
            queued: Vec::new(),
            in_flight: Vec::new(),
            staged: Vec::new(),
        }
    }

    fn place(&self, resolver: &str) -> usize {
        self.resolvers
            .iter()
            .position(|r| *r == resolver)
            .unwrap_or(self.resolvers.len())
    }

    /// `resolver` answered with `found` (best first), or failed (`found` empty).
    pub(super) fn answered(&mut self, resolver: &str, found: Vec<Candidate>) {
        let place = self.place(resolver);
        if let Some(u) = self.unanswered.get_mut(place) {
            *u = false;
        }
        for (i, c) in found.into_iter().enumerate() {
            let rank = (class(&c.resolver), place, i);
            self.queued.push((rank, c));
        }
    }

    /// The best-ranked queued candidate, counted as downloading from now on.
    pub(super) fn next(&mut self) -> Option<(Rank, Candidate)> {
        let best = (0..self.queued.len()).min_by_key(|&i| self.queued[i].0)?;
        let (rank, candidate) = self.queued.remove(best);
        self.in_flight.push(rank);
        Some((rank, candidate))
    }

    /// A download started by [`next`](Self::next) ended (or was not started after all).
    pub(super) fn ended(&mut self, rank: Rank) {
        if let Some(i) = self.in_flight.iter().position(|r| *r == rank) {
            self.in_flight.swap_remove(i);
        }
    }

    /// A download gave a valid PDF.
    pub(super) fn stage(&mut self, rank: Rank, staged: Staged, candidate: Candidate) {
        self.staged.push((rank, staged, candidate));
    }

    /// Whether a valid PDF is staged.
    pub(super) fn has_staged(&self) -> bool {
        !self.staged.is_empty()
    }

    /// The best staged PDF now, whatever is still pending ([`WAIT_FOR_BETTER`] has passed).
    pub(super) fn best_now(&mut self) -> Option<(Staged, Candidate)> {
        let best = (0..self.staged.len()).min_by_key(|&i| self.staged[i].0)?;
        let (_, staged, candidate) = self.staged.swap_remove(best);
        Some((staged, candidate))
    }

    /// The best staged PDF, once nothing still pending could rank better; `queued_live`
    /// says whether queued candidates may still start (the attempt budget is not spent).
    pub(super) fn winner(&mut self, queued_live: bool) -> Option<(Staged, Candidate)> {
        let best = (0..self.staged.len()).min_by_key(|&i| self.staged[i].0)?;
        let rank = self.staged[best].0;
        let unanswered = self.unanswered.iter().enumerate().filter(|(_, u)| **u).map(|(i, _)| {
            // an unanswered resolver's candidates rank no better than its own class and place
            // (a publisher source's may rank first)
            (class(self.resolvers[i]), i, 0)
        });
        let queued = self.queued.iter().filter(|_| queued_live).map(|(r, _)| *r);
        let pending_better = unanswered
            .chain(queued)
            .chain(self.in_flight.iter().copied())
            .any(|r| r < rank);
        if pending_better {
            return None;
        }
        let (_, staged, candidate) = self.staged.swap_remove(best);
        Some((staged, candidate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(resolver: &str, url: &str) -> Candidate {
        Candidate {
            url: url.into(),
            resolver: resolver.into(),
            is_pdf: true,
        }
    }

    #[test]
    fn publishers_first_then_the_tiers_order_then_the_answers() {
        let mut t = Choice::new(vec!["unpaywall", "core", "crossref"]);
        t.answered("core", vec![c("core", "r1"), c("core", "r2")]);
        t.answered("unpaywall", vec![c("unpaywall", "u1")]);
        t.answered("crossref", vec![c("crossref", "p1")]);
        let order: Vec<String> = std::iter::from_fn(|| t.next().map(|(_, c)| c.url)).collect();
        assert_eq!(order, ["p1", "u1", "r1", "r2"]);
    }
}
