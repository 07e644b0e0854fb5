//! Resolver answers remembered: each resolver's answer for a work (its candidate URLs as
//! JSON, or `[]` for "nothing"), with the time it was given, so that a rerun or the second
//! pass within the cache's age asks no provider twice for the same work.

use std::collections::HashMap;
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
            rows.iter().map(|r| answer_of(r, 0)).collect()
        })
    }

    /// [`resolver_answers`](Ledger::resolver_answers) for many works in one query (up to
    /// 500 a query): every work of `work_ids` is a key of the map, with no answer when none
    /// is remembered within `max_age`. A zero `max_age` makes no query.
    ///
    /// ```
    /// use std::time::Duration;
    /// use contentdownload::ledger::{Ledger, LedgerConfig, ResolverAnswer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let dir = tempfile::tempdir()?;
    /// let ledger = Ledger::connect(LedgerConfig::in_dir(dir.path())).await?;
    /// let nothing = ResolverAnswer {
    ///     resolver: "unpaywall".into(),
    ///     answer: "[]".into(),
    ///     candidates: 0,
    ///     found_pdf: false,
    ///     answered_at: None,
    /// };
    /// ledger.remember_answers("W1", &[nothing]).await?;
    /// let day = Duration::from_secs(86_400);
    /// let known = ledger.resolver_answers_of(&["W1", "W2"], day).await?;
    /// assert_eq!((known["W1"].len(), known["W2"].len()), (1, 0));
    /// # Ok(()) }
    /// ```
    pub async fn resolver_answers_of(
        &self,
        work_ids: &[&str],
        max_age: Duration,
    ) -> Result<HashMap<String, Vec<ResolverAnswer>>, LedgerError> {
        let mut out: HashMap<String, Vec<ResolverAnswer>> =
            work_ids.iter().map(|w| ((*w).to_owned(), Vec::new())).collect();
        if max_age.is_zero() {
            return Ok(out);
        }
        let since = self
            .now()
            .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let sqlite = self.backend_name() == "sqlite";
        for ids in work_ids.chunks(ANSWERS_OF_BATCH) {
            // padded as the settled reads are (see `settled::padded_len`), and on SQLite with
            // anonymous parameters (for numbered ones sqlx asks SQLite each one's name, a
            // walk through the statement's list of names); the padding is NULL
            let n = super::settled::padded_len(ids.len(), ANSWERS_OF_BATCH);
            let mut sql = String::from(
                "SELECT work_id, resolver, answer, candidates, found_pdf, answered_at FROM resolver_answers \
                 WHERE answered_at >= ",
            );
            sql.push_str(if sqlite { "?" } else { "$1" });
            sql.push_str(" AND work_id IN (");
            for i in 0..n {
                if i > 0 {
                    sql.push_str(", ");
                }
                if sqlite {
                    sql.push('?');
                } else {
                    sql.push_str(&format!("${}", i + 2));
                }
            }
            sql.push_str(") ORDER BY work_id, resolver");
            with_pool!(self, pool => {
                let mut q = sqlx::query(&sql).bind(since);
                for id in ids {
                    q = q.bind(*id);
                }
                if !sqlite {
                    for _ in ids.len()..n {
                        q = q.bind(None::<&str>);
                    }
                }
                let rows = q.fetch_all(pool).await.map_err(LedgerError::db("read resolver answers"))?;
                for r in &rows {
                    use sqlx::Row;
                    let err = || LedgerError::db("read resolver answers");
                    let work: String = r.try_get(0).map_err(err())?;
                    let answer = answer_of(r, 1)?;
                    out.entry(work).or_default().push(answer);
                }
            });
        }
        Ok(out)
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

/// The most works in one [`Ledger::resolver_answers_of`] query.
const ANSWERS_OF_BATCH: usize = 500;

/// The answer in `r`'s columns from `at` on: resolver, answer, candidates, found_pdf,
/// answered_at.
fn answer_of<R>(r: &R, at: usize) -> Result<ResolverAnswer, LedgerError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let err = || LedgerError::db("read resolver answers");
    let candidates: i64 = r.try_get(at + 2).map_err(err())?;
    let found: i64 = r.try_get(at + 3).map_err(err())?;
    Ok(ResolverAnswer {
        resolver: r.try_get(at).map_err(err())?,
        answer: r.try_get(at + 1).map_err(err())?,
        candidates: u32::try_from(candidates).unwrap_or(0),
        found_pdf: found != 0,
        answered_at: Some(r.try_get(at + 4).map_err(err())?),
    })
}
