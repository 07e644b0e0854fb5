//! Ops: the side effects of each job (HEAD, STREAM, FINALIZE, ...), recorded so a restarted
//! worker knows what already happened.

use super::connect::WritePool;
use super::error::LedgerError;
use super::row::{self, op_columns};
use super::types::{JobId, Op, OpKey, OpStart, OpStatus};
use super::{with_pool, with_write_pool, Ledger};

impl Ledger {
    /// Records that `owner` begins side effect `kind` of `job` in `context` (a URL, a byte
    /// range...). The effect's key is [`OpKey::of`]`(kind, job, context)`; if it was recorded
    /// before, says how it went instead of starting it again (see [`OpStart`]).
    pub async fn start_op(&self, job: JobId, kind: &str, context: &str, owner: &str) -> Result<OpStart, LedgerError> {
        let key = OpKey::of(kind, job, context);
        let now = self.now();
        with_write_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let inserted = sqlx::query(
                "INSERT INTO ops (op_key, job_id, kind, status, owner, started_at) \
                 VALUES ($1, $2, $3, 'STARTED', $4, $5) ON CONFLICT (op_key) DO NOTHING",
            )
            .bind(key.as_str())
            .bind(job.0)
            .bind(kind)
            .bind(owner)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(LedgerError::db("start an op"))?
            .rows_affected();
            let start = if inserted == 1 {
                OpStart::Started(key)
            } else {
                let r = sqlx::query(concat!("SELECT ", op_columns!(), " FROM ops WHERE op_key = $1"))
                    .bind(key.as_str())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(LedgerError::db("read an op"))?;
                let old = row::op(&r)?;
                match old.status {
                    OpStatus::Finished => OpStart::AlreadyFinished(old),
                    OpStatus::Started => OpStart::InProgress(old),
                    OpStatus::Abandoned => {
                        sqlx::query(
                            "UPDATE ops SET status = 'STARTED', owner = $1, started_at = $2, finished_at = NULL, \
                             result = NULL WHERE op_key = $3 AND status = 'ABANDONED'",
                        )
                        .bind(owner)
                        .bind(now)
                        .bind(key.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(LedgerError::db("restart an op"))?;
                        OpStart::Restarted(old)
                    }
                }
            };
            tx.commit().await.map_err(LedgerError::db("commit an op start"))?;
            Ok(start)
        })
    }

    /// Records that the effect `key` finished with `result` (cut to the configured maximum,
    /// on a character boundary). An ABANDONED op may still be finished by the worker that
    /// began it, if it turns out to have been alive after all.
    pub async fn finish_op(&self, key: &OpKey, result: &str) -> Result<(), LedgerError> {
        let now = self.now();
        let result = cap(result, self.inner.max_op_result_bytes);
        with_write_pool!(self, pool => {
            let mut conn = pool.acquire().await.map_err(LedgerError::db("finish an op"))?;
            let done = sqlx::query(
                "UPDATE ops SET status = 'FINISHED', finished_at = $1, result = $2 \
                 WHERE op_key = $3 AND status IN ('STARTED', 'ABANDONED')",
            )
            .bind(now)
            .bind(result)
            .bind(key.as_str())
            .execute(&mut *conn)
            .await
            .map_err(LedgerError::db("finish an op"))?
            .rows_affected();
            if done == 1 {
                return Ok(());
            }
            let r = sqlx::query("SELECT status FROM ops WHERE op_key = $1")
                .bind(key.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(LedgerError::db("read an op"))?;
            let status = match r {
                Some(r) => {
                    use sqlx::Row;
                    let s: String = r.try_get(0).map_err(LedgerError::db("read an op"))?;
                    Some(s.parse::<OpStatus>()?)
                }
                None => None,
            };
            Err(LedgerError::OpNotOpen { key: key.0.clone(), status })
        })
    }

    /// Every op of `job`, oldest first.
    pub async fn ops(&self, job: JobId) -> Result<Vec<Op>, LedgerError> {
        with_pool!(self, pool => {
            let rows = sqlx::query(concat!(
                "SELECT ", op_columns!(), " FROM ops WHERE job_id = $1 ORDER BY started_at, op_key"
            ))
            .bind(job.0)
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("list ops"))?;
            rows.iter().map(row::op).collect()
        })
    }
}

/// `s` cut to at most `max` bytes on a character boundary, marked with `…` when cut.
fn cap(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::cap;

    #[test]
    fn results_are_capped_on_a_char_boundary() {
        assert_eq!(cap("short", 10), "short");
        let long = "é".repeat(100);
        let c = cap(&long, 11);
        assert!(c.len() <= 11, "{}", c.len());
        assert!(c.ends_with('…'));
        assert_eq!(cap("abcdef", 4), "a…");
    }
}
