//! Resolver answers remembered: each resolver's answer for a work (its candidate URLs as
//! JSON, or `[]` for "nothing"), with the time it was given, so that a rerun or the second
//! pass within the cache's age asks no provider twice for the same work.

use std::time::Duration;

use super::error::LedgerError;
use super::{with_pool, with_write_pool, Ledger};

/// A resolver's answer for a work, as the ledger keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolverAnswer {
    /// The resolver's name (`"unpaywall"`).
    pub resolver: String,
    /// The answer: a JSON list of candidates (`[]`: the resolver found nothing). The ledger
    /// does not read it.
    pub answer: String,
    /// How many candidates the answer holds.
    pub candidates: u32,
    /// Whether the work's PDF came from one of the answer's candidates.
    pub found_pdf: bool,
    /// When the resolver gave it, Unix milliseconds by the ledger's clock; `None` in an
    /// answer to write means now.
    pub answered_at: Option<i64>,
}

/// What the ledger remembers of one resolver, over every work ([`Ledger::resolver_totals`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverTotals {
    /// The resolver's name.
    pub resolver: String,
    /// Works it has an answer for.
    pub works: u64,
    /// Of those, works it proposed at least one candidate for.
    pub with_candidates: u64,
    /// Works whose PDF came from its candidates.
    pub pdfs: u64,
}

impl Ledger {
    /// The answers remembered for `work_id` that are at most `max_age` old, in resolver
    /// order. A zero `max_age` remembers nothing: no query is made.
    pub async fn resolver_answers(&self, work_id: &str, max_age: Duration) -> Result<Vec<ResolverAnswer>, LedgerError> {
        if max_age.is_zero() {
            return Ok(Vec::new());
        }
        let since = self
            .now()
            .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT resolver, answer, candidates, found_pdf, answered_at FROM resolver_answers \
                 WHERE work_id = $1 AND answered_at >= $2 ORDER BY resolver",
            )
            .bind(work_id)
            .bind(since)
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("read resolver answers"))?;
            rows.iter().map(|r| {
                use sqlx::Row;
                let err = || LedgerError::db("read resolver answers");
                let candidates: i64 = r.try_get(2).map_err(err())?;
                let found: i64 = r.try_get(3).map_err(err())?;
                Ok(ResolverAnswer {
                    resolver: r.try_get(0).map_err(err())?,
                    answer: r.try_get(1).map_err(err())?,
                    candidates: u32::try_from(candidates).unwrap_or(0),
                    found_pdf: found != 0,
                    answered_at: Some(r.try_get(4).map_err(err())?),
                })
            })
            .collect()
        })
    }

    /// Remembers `answers` for `work_id` in one statement, replacing what was kept for the
    /// same resolvers.
    pub async fn remember_answers(&self, work_id: &str, answers: &[ResolverAnswer]) -> Result<(), LedgerError> {
        if answers.is_empty() {
            return Ok(());
        }
        let now = self.now();
        // SQLite: answers that arrive together are written in one statement (see `batch`);
        // what it does not write is written below, alone, to say why
        if let Some(batch) = &self.inner.batch {
            if batch.remember(work_id, answers, now).await {
                return Ok(());
            }
        }
        let mut sql = String::from(
            "INSERT INTO resolver_answers (work_id, resolver, answer, candidates, found_pdf, answered_at) VALUES ",
        );
        for i in 0..answers.len() {
            let p = 1 + i * 5;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "($1, ${}, ${}, ${}, ${}, ${})",
                p + 1,
                p + 2,
                p + 3,
                p + 4,
                p + 5
            ));
        }
        sql.push_str(
            " ON CONFLICT (work_id, resolver) DO UPDATE SET answer = excluded.answer, \
             candidates = excluded.candidates, found_pdf = excluded.found_pdf, answered_at = excluded.answered_at",
        );
        with_write_pool!(self, pool => {
            let mut q = sqlx::query(&sql).bind(work_id);
            for a in answers {
                q = q
                    .bind(a.resolver.as_str())
                    .bind(a.answer.as_str())
                    .bind(i64::from(a.candidates))
                    .bind(i64::from(a.found_pdf))
                    .bind(a.answered_at.unwrap_or(now));
            }
            let mut conn = pool.acquire().await.map_err(LedgerError::db("remember resolver answers"))?;
            q.execute(&mut *conn)
                .await
                .map_err(LedgerError::db("remember resolver answers"))?;
            Ok(())
        })
    }

    /// Per resolver, what the ledger remembers over every work: works answered, works with
    /// candidates, PDFs found; in resolver-name order.
    pub async fn resolver_totals(&self) -> Result<Vec<ResolverTotals>, LedgerError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(
                "SELECT resolver, COUNT(*), \
                 CAST(SUM(CASE WHEN candidates > 0 THEN 1 ELSE 0 END) AS BIGINT), \
                 CAST(SUM(found_pdf) AS BIGINT) \
                 FROM resolver_answers GROUP BY resolver ORDER BY resolver",
            )
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("count resolver answers"))?;
            rows.iter().map(|r| {
                use sqlx::Row;
                let err = || LedgerError::db("count resolver answers");
                let n = |i: usize| -> Result<u64, LedgerError> {
                    let v: Option<i64> = r.try_get(i).map_err(err())?;
                    Ok(u64::try_from(v.unwrap_or(0)).unwrap_or(0))
                };
                Ok(ResolverTotals {
                    resolver: r.try_get(0).map_err(err())?,
                    works: n(1)?,
                    with_candidates: n(2)?,
                    pdfs: n(3)?,
                })
            })
            .collect()
        })
    }
}
