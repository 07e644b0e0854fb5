//! Resolver answers remembered across runs ([`Answers`]), and how often each resolver was
//! asked in this run.
//!
//! Each resolver's answer for a work (its candidate URLs, or "nothing") is kept in the
//! ledger with the time it was given ([`Ledger::remember_answers`]); within
//! [`FallbackConfig::resolver_cache_ttl_secs`](super::FallbackConfig::resolver_cache_ttl_secs)
//! a rerun, or the second pass, takes the answer from there instead of asking the provider
//! again. Only answers are kept: an error (throttled, 5xx, unreachable) is asked again next
//! time. The answers of the next works of the input are read in one query
//! ([`Answers::read_ahead`]), taken before the first tier that has a resolver whose answers
//! are kept, and written when its fetch ends, together with those of
//! the next works ([`REMEMBER_GROUP`] at a time, and all that wait when the run flushes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use crate::ledger::{Ledger, ResolverAnswer};
use crate::manifest::ResolverCounts;
use crate::works::{Candidate, Work};

/// Resolvers that read the work's record and ask no one: their answers are not remembered
/// (a newer record must be read anew, and there is no call to save).
const ASKS_NO_ONE: [&str; 2] = ["openalex", "arxiv"];

/// An answer taken from the ledger.
#[derive(Debug)]
pub(super) struct Recalled {
    pub(super) candidates: Vec<Candidate>,
    pub(super) answered_at: Option<i64>,
}

/// A resolver's answer given in a fetch, to remember.
#[derive(Debug)]
pub(super) struct Given {
    pub(super) resolver: &'static str,
    pub(super) candidates: Vec<Candidate>,
    /// `Some` when it came from the ledger (its original time).
    pub(super) recalled_at: Option<i64>,
}

/// The answers memory of a [`Fallback`](super::Fallback): the ledger (none: nothing is
/// remembered), the age within which an answer is used, and this run's counts.
#[derive(Debug, Default)]
pub(super) struct Answers {
    ledger: Option<Ledger>,
    ttl: Duration,
    counts: Mutex<BTreeMap<String, ResolverCounts>>,
    /// Answers given and not yet written, by work: written [`REMEMBER_GROUP`] works at a
    /// time (and by [`flush`](Answers::flush)).
    pending: Mutex<Vec<(String, Vec<ResolverAnswer>)>>,
    /// Answers read ahead ([`read_ahead`](Answers::read_ahead)), by work, until recalled.
    read_ahead: Mutex<HashMap<String, Vec<ResolverAnswer>>>,
}

/// How many works' answers are written together. One write per work was a write
/// transaction each, the largest per-work ledger cost of a bulk run (`strace`, 500 works:
/// 500 answer statements, 9 claim statements); a process that stops loses at most this
/// many works' answers, which a rerun asks again (a cache, not a record).
const REMEMBER_GROUP: usize = 64;

impl Answers {
    pub(super) fn new(ledger: Option<Ledger>, ttl: Duration) -> Answers {
        Answers {
            ledger,
            ttl,
            counts: Mutex::default(),
            pending: Mutex::default(),
            read_ahead: Mutex::default(),
        }
    }

    /// Whether `resolver`'s answers are remembered (and so worth reading before it is asked).
    pub(super) fn kept_for(resolver: &str) -> bool {
        !ASKS_NO_ONE.contains(&resolver)
    }

    fn remembers(&self) -> Option<&Ledger> {
        self.ledger.as_ref().filter(|_| !self.ttl.is_zero())
    }

    /// The answers remembered for `work` within the age, by resolver. A ledger that cannot
    /// be read, or an answer that cannot be parsed, costs a request, not the work.
    pub(super) async fn recall(&self, work: &Work) -> HashMap<String, Recalled> {
        let Some(ledger) = self.remembers() else {
            return HashMap::new();
        };
        let read_ahead = self.lock_read_ahead().remove(work.id.as_str());
        let rows = match read_ahead {
            Some(rows) => rows,
            None => match ledger.resolver_answers(work.id.as_str(), self.ttl).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(work = %work.id, "could not read remembered resolver answers, asking again: {e}");
                    return HashMap::new();
                }
            },
        };
        rows.into_iter()
            .filter_map(|row| {
                let candidates: Vec<Candidate> = serde_json::from_str(&row.answer).ok()?;
                Some((
                    row.resolver,
                    Recalled {
                        candidates,
                        answered_at: row.answered_at,
                    },
                ))
            })
            .collect()
    }

    /// Reads the remembered answers of the works `ids` (the next ones of the input) in one query,
    /// for their [`recall`](Answers::recall): a read per work was a round trip to the
    /// ledger's reader thread and a WAL read lock each. A failed read leaves each work to
    /// read its own.
    pub(super) async fn read_ahead(&self, ids: &[&str]) {
        let Some(ledger) = self.remembers() else {
            return;
        };
        match ledger.resolver_answers_of(ids, self.ttl).await {
            Ok(known) => self.lock_read_ahead().extend(known),
            Err(e) => tracing::debug!("could not read remembered resolver answers ahead, reading each: {e}"),
        }
    }

    /// Drops what was read ahead for `work` and not recalled (its tiers asked no one whose
    /// answers are kept).
    pub(super) fn forget(&self, work: &Work) {
        self.lock_read_ahead().remove(work.id.as_str());
    }

    fn lock_read_ahead(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<ResolverAnswer>>> {
        self.read_ahead.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one answer of `resolver` (from memory or asked).
    pub(super) fn count(&self, resolver: &str, recalled: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let c = counts.entry(resolver.to_owned()).or_default();
        if recalled {
            c.cached += 1;
        } else {
            c.asked += 1;
        }
    }

    /// This run's counts so far (asked and from memory; the PDFs are counted from the
    /// works' records), leaving zero behind.
    pub(super) fn take_counts(&self) -> BTreeMap<String, ResolverCounts> {
        std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Remembers the answers given in one fetch of `work`, in one statement: the fresh
    /// ones, and the one the PDF came from (`winner`) marked as such.
    pub(super) async fn remember(&self, work: &Work, given: Vec<Given>, winner: Option<&str>) {
        let Some(ledger) = self.remembers() else {
            return;
        };
        let rows: Vec<ResolverAnswer> = given
            .into_iter()
            .filter(|g| Answers::kept_for(g.resolver))
            .filter(|g| g.recalled_at.is_none() || winner == Some(g.resolver))
            .filter_map(|g| {
                Some(ResolverAnswer {
                    resolver: g.resolver.to_owned(),
                    answer: serde_json::to_string(&g.candidates).ok()?,
                    candidates: u32::try_from(g.candidates.len()).unwrap_or(u32::MAX),
                    found_pdf: winner == Some(g.resolver),
                    answered_at: g.recalled_at,
                })
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        // given their time now, not when they are written
        let now = ledger.clock().now_ms();
        let rows = rows
            .into_iter()
            .map(|r| ResolverAnswer {
                answered_at: Some(r.answered_at.unwrap_or(now)),
                ..r
            })
            .collect();
        let full = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            pending.push((work.id.as_str().to_owned(), rows));
            (pending.len() >= REMEMBER_GROUP).then(|| std::mem::take(&mut *pending))
        };
        if let Some(group) = full {
            write_answers(ledger, group).await;
        }
    }

    /// Writes the answers still waiting in this handle's group (the run calls it before
    /// its second pass, which reads them, and before it ends).
    pub(super) async fn flush(&self) {
        let Some(ledger) = self.remembers() else {
            return;
        };
        let group = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !group.is_empty() {
            write_answers(ledger, group).await;
        }
    }
}

/// The answers of many works, sent to the ledger at once: on SQLite its batcher writes
/// what arrives together in one statement, on PostgreSQL each work's go alone.
async fn write_answers(ledger: &Ledger, group: Vec<(String, Vec<ResolverAnswer>)>) {
    let writes = group.iter().map(|(work, rows)| async move {
        if let Err(e) = ledger.remember_answers(work, rows).await {
            tracing::warn!(work = %work, "could not remember resolver answers: {e}");
        }
    });
    futures_util::future::join_all(writes).await;
}
