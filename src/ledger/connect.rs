//! Opening a ledger: configuration, the two backends, migrations.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Sqlite, Transaction};

use super::error::LedgerError;

/// The file name of the embedded ledger inside an output folder.
pub const SQLITE_FILE_NAME: &str = "ledger.sqlite";

/// How to open a [`Ledger`](super::Ledger).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerConfig {
    /// Where the ledger lives: `sqlite://<path>?mode=rwc`, a plain file path (SQLite), or
    /// `postgres://user@host:port/db` (needs the `postgres` feature).
    pub url: String,
    /// The most connections the pool opens. Default 8. SQLite: the pool of readers; writes
    /// always go through one connection of their own.
    pub max_connections: u32,
    /// SQLite: how long a statement waits for another process's write lock before failing.
    /// Default 30 s.
    pub busy_timeout: Duration,
    /// PostgreSQL: a schema to create (if missing) and use for the ledger's tables, so that
    /// several ledgers can share one database. Lower-case letters, digits and `_` only.
    pub pg_schema: Option<String>,
    /// How long a lease lasts unless renewed by a heartbeat; also the age past which an
    /// unfinished op counts as abandoned. Default 5 minutes.
    pub lease_ttl: Duration,
    /// Run [`Ledger::reconcile`](super::Ledger::reconcile) right after opening. Default on.
    pub reconcile_on_open: bool,
    /// The largest op result stored, in bytes; longer results are cut. Default 4096.
    pub max_op_result_bytes: usize,
    /// PostgreSQL: how long opening the ledger may take to reach the server, and how long
    /// the pool waits for a connection afterwards; past it the error says which ledger could
    /// not be reached ([`LedgerError::Unreachable`]). Default 10 s.
    pub connect_timeout: Duration,
    /// Apply the schema migrations (and, on PostgreSQL, create `pg_schema`) when opening.
    /// Default on. Off for read commands such as `contentdownload status`, which must
    /// leave an older ledger as it is: the schema is then used as found, and what an older
    /// schema lacks reads as empty where the caller checks
    /// [`schema_version`](super::Ledger::schema_version).
    pub migrate: bool,
}

/// The default [`LedgerConfig::connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl LedgerConfig {
    /// A configuration for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        LedgerConfig {
            url: url.into(),
            max_connections: 8,
            busy_timeout: Duration::from_secs(30),
            pg_schema: None,
            lease_ttl: Duration::from_secs(300),
            reconcile_on_open: true,
            max_op_result_bytes: 4096,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            migrate: true,
        }
    }

    /// The embedded default: `<dir>/ledger.sqlite`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let path: PathBuf = dir.as_ref().join(SQLITE_FILE_NAME);
        LedgerConfig::new(path.to_string_lossy().into_owned())
    }

    pub(crate) fn validate(&self) -> Result<(), LedgerError> {
        let bad = |field, message: &str| {
            Err(LedgerError::Config {
                field,
                message: message.to_owned(),
            })
        };
        if self.url.trim().is_empty() {
            return bad("url", "empty; give a sqlite:// or postgres:// URL or a file path");
        }
        self.sqlite_path()?;
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1");
        }
        if self.lease_ttl < Duration::from_millis(1) {
            return bad("lease_ttl", "must be at least 1 ms");
        }
        if self.connect_timeout < Duration::from_millis(1) {
            return bad("connect_timeout", "must be at least 1 ms");
        }
        if let Some(schema) = &self.pg_schema {
            let ok = !schema.is_empty()
                && schema.len() <= 63
                && schema
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                && !schema.as_bytes()[0].is_ascii_digit();
            if !ok {
                return bad(
                    "pg_schema",
                    "use 1-63 lower-case letters, digits and _, not starting with a digit",
                );
            }
        }
        Ok(())
    }

    pub(crate) fn is_postgres(&self) -> bool {
        let u = self.url.trim_start();
        u.starts_with("postgres:") || u.starts_with("postgresql:")
    }

    /// The SQLite file this configuration names: `Ok(Some(path))` for a `sqlite:` URL or a
    /// plain path, `Ok(None)` for PostgreSQL and in-memory SQLite. An unknown scheme
    /// (`mysql://x`) or a `postgres://` URL in a build without the `postgres` feature is an
    /// error that says so, rather than a file named after the URL.
    ///
    /// ```
    /// use contentdownload::ledger::LedgerConfig;
    /// let path = LedgerConfig::new("sqlite:///srv/out/ledger.sqlite").sqlite_path().unwrap();
    /// assert_eq!(path.as_deref(), Some(std::path::Path::new("/srv/out/ledger.sqlite")));
    /// assert!(LedgerConfig::new("mysql://db/x").sqlite_path().is_err());
    /// ```
    pub fn sqlite_path(&self) -> Result<Option<PathBuf>, LedgerError> {
        if self.is_postgres() {
            if cfg!(feature = "postgres") {
                return Ok(None);
            }
            return Err(LedgerError::Config {
                field: "url",
                message: "a postgres:// ledger needs contentdownload built with the `postgres` feature \
                          (cargo install contentdownload --features postgres)"
                    .into(),
            });
        }
        let opts = sqlite_options(&self.url)?;
        let file = opts.get_filename();
        Ok((file.as_os_str() != ":memory:" && !self.url.contains(":memory:")).then(|| file.to_owned()))
    }
}

/// The scheme of `url` when it starts with one (`mysql:` of `mysql://x`): letters, digits,
/// `+`, `-`, `.`, at least two characters (so that `C:\x` stays a path).
fn scheme_of(url: &str) -> Option<&str> {
    let (scheme, _) = url.split_once(':')?;
    let mut bytes = scheme.bytes();
    let first = bytes.next()?;
    let ok = scheme.len() >= 2
        && first.is_ascii_alphabetic()
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
    ok.then_some(scheme)
}

/// The connect options of a SQLite ledger: a `sqlite:` URL, or a plain file path.
fn sqlite_options(url: &str) -> Result<SqliteConnectOptions, LedgerError> {
    let url = url.trim();
    if url.starts_with("sqlite:") {
        return SqliteConnectOptions::from_str(url).map_err(|e| LedgerError::Config {
            field: "url",
            message: format!("not a usable sqlite URL ({e}); write sqlite://<path>?mode=rwc"),
        });
    }
    if let Some(scheme) = scheme_of(url) {
        return Err(LedgerError::Config {
            field: "url",
            message: format!(
                "unknown ledger scheme `{scheme}:`; use sqlite://<path>, postgres://user@host:port/database \
                 or a file path (starting with ./ when the file's name has a colon)"
            ),
        });
    }
    Ok(SqliteConnectOptions::new().filename(url))
}

/// `url` with its password (in the userinfo or a `password=` parameter) replaced by
/// `REDACTED`, fit for logs and error messages.
///
/// ```
/// use contentdownload::ledger::redact_url;
/// assert_eq!(redact_url("postgres://me:s3cret@db:5432/l"), "postgres://me:REDACTED@db:5432/l");
/// assert_eq!(redact_url("postgres://db/l?password=s3cret"), "postgres://db/l?password=REDACTED");
/// ```
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url.trim()) else {
        // not a URL (a file path): nothing that looks like a password to hide
        return url.to_owned();
    };
    let in_query = parsed.query_pairs().any(|(k, _)| k.eq_ignore_ascii_case("password"));
    if parsed.password().is_none() && !in_query {
        // as given: nothing to hide, and no normalisation to confuse the reader
        return url.to_owned();
    }
    if parsed.password().is_some() {
        // only fails for URLs that cannot have a password, which this one has
        let _ = parsed.set_password(Some("REDACTED"));
    }
    if in_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "REDACTED".to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// The ledger's notion of now, in Unix milliseconds: the system clock plus an offset that
/// is zero unless a test moves it with [`advance`](LedgerClock::advance).
///
/// Lease expiry is compared with this clock on every machine, so machines sharing a
/// PostgreSQL ledger need clocks in sync (NTP) to well within the lease TTL.
#[derive(Clone, Debug, Default)]
pub struct LedgerClock {
    offset_ms: Arc<AtomicI64>,
}

impl LedgerClock {
    /// Now, Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        let sys = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        sys.saturating_add(self.offset_ms.load(Ordering::Relaxed))
    }

    /// Moves this ledger handle's clock forward (for tests of lease expiry: a worker that
    /// "waits out" a TTL without sleeping). Shared by clones of the ledger.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.offset_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Which database a ledger talks to.
#[derive(Debug)]
pub(crate) enum Backend {
    Sqlite(SqlitePools),
    #[cfg(feature = "postgres")]
    Postgres(Pool<sqlx::Postgres>),
}

/// The SQLite ledger's two pools: readers, and one writer connection.
///
/// SQLite lets one writer in at a time. With every pooled connection free to write, writers
/// of the same process collided on the file lock and SQLite's busy handler put them to
/// sleep (1, 2, 5, 10 ... 100 ms): in a bulk run most of the ledger's time went to those
/// sleeps. All writes of one handle (and its clones) now go through a single connection, so
/// they wait their turn in the pool's queue, in memory, and are served as soon as the
/// previous one commits. The busy timeout still covers other processes sharing the file.
/// Readers keep their own pool: in WAL mode they never wait for the writer.
#[derive(Debug)]
pub(crate) struct SqlitePools {
    pub(crate) read: Pool<Sqlite>,
    pub(crate) write: Pool<Sqlite>,
}

/// Starting a write transaction the way each backend wants it.
pub(crate) trait WritePool {
    type Db: sqlx::Database;
    /// SQLite: `BEGIN IMMEDIATE`, so the write lock is taken up front and waits on the busy
    /// timeout instead of failing on a lock upgrade; PostgreSQL: a plain `BEGIN`.
    async fn begin_write(&self) -> Result<Transaction<'static, Self::Db>, LedgerError>;
}

impl WritePool for Pool<Sqlite> {
    type Db = Sqlite;
    async fn begin_write(&self) -> Result<Transaction<'static, Sqlite>, LedgerError> {
        self.begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(LedgerError::db("begin a write transaction"))
    }
}

#[cfg(feature = "postgres")]
impl WritePool for Pool<sqlx::Postgres> {
    type Db = sqlx::Postgres;
    async fn begin_write(&self) -> Result<Transaction<'static, sqlx::Postgres>, LedgerError> {
        self.begin().await.map_err(LedgerError::db("begin a write transaction"))
    }
}

/// The migrations in order: `(version, description, sql)`.
fn migrator(steps: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator {
        migrations: Cow::Owned(
            steps
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect(),
        ),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

pub(crate) async fn open_sqlite(cfg: &LedgerConfig) -> Result<Backend, LedgerError> {
    let opts = sqlite_options(&cfg.url)?;
    // The file's folder must exist: a mistyped path is an error, not a new folder tree
    // (the runner creates its output folder, where the default ledger lives, itself).
    if let Some(file) = cfg.sqlite_path()? {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !parent.is_dir() {
                return Err(LedgerError::Config {
                    field: "url",
                    message: format!(
                        "the ledger's folder {} does not exist; create it or choose another path",
                        parent.display()
                    ),
                });
            }
        }
    }
    // `synchronous = NORMAL` under WAL: a commit is appended to the WAL without an fsync
    // (the WAL is synced at each checkpoint). A process crash or SIGKILL loses nothing that
    // was committed; a power loss may lose the last commits, never the file's consistency.
    // That keeps FINALIZED honest: a PDF is synced (`file`, `batch`) before the commit that
    // finalizes it is even written, so a FINALIZED row that survives a power loss names a
    // durable file; a lost one leaves the job LEASED by a process that is gone, taken back
    // at the next start and its file adopted in place (checked and hashed), not fetched
    // again. `FULL` would add an fsync per commit and buy only those last rows.
    let opts = opts
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(cfg.busy_timeout)
        .foreign_keys(true);
    // A queued writer waits for the ones before it (each a few statements long) and then,
    // like any connection, up to the busy timeout for other processes.
    let acquire_timeout = cfg.busy_timeout.max(Duration::from_secs(5)).saturating_mul(2);
    // The writer first: it creates the file and switches it to WAL mode.
    // `test_before_acquire` is off: a ping per acquire costs a round trip to the
    // connection's thread, and a local file does not drop connections.
    let write = open_busy_tolerant(|| {
        SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .connect_with(opts.clone())
    })
    .await?;
    let read = open_busy_tolerant(|| {
        SqlitePoolOptions::new()
            .max_connections(cfg.max_connections)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            .connect_with(opts.clone())
    })
    .await?;
    let pool = write;
    let m = migrator(&[
        (
            1,
            "jobs and ops",
            include_str!("../../migrations/sqlite/0001_jobs_and_ops.sql"),
        ),
        (
            2,
            "resolver answers",
            include_str!("../../migrations/sqlite/0002_resolver_answers.sql"),
        ),
        (
            3,
            "cheaper checks and lease indexes",
            include_str!("../../migrations/sqlite/0003_cheaper_checks_and_lease_indexes.sql"),
        ),
    ]);
    // Several processes may open a fresh file at once; SQLite has no migration lock, so
    // the loser of the race sees the version already taken and simply tries again (the
    // migration itself is idempotent).
    if cfg.migrate {
        let mut tries = 0;
        loop {
            match m.run(&pool).await {
                Ok(()) => break,
                Err(_) if tries < 5 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Backend::Sqlite(SqlitePools { read, write: pool }))
}

/// Opens a SQLite pool, trying again (up to 6 times, 50 ms doubling) while the file is
/// busy: switching a fresh file to WAL mode takes an exclusive lock, and SQLite may answer
/// `SQLITE_BUSY` at once rather than wait out the busy timeout when several processes open
/// the same new ledger together.
async fn open_busy_tolerant<F, Fut>(mut open: F) -> Result<sqlx::SqlitePool, LedgerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<sqlx::SqlitePool, sqlx::Error>>,
{
    let mut backoff = Duration::from_millis(50);
    for _ in 0..6 {
        match open().await {
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("5") => {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            other => return other.map_err(LedgerError::db("open the SQLite ledger")),
        }
    }
    open().await.map_err(LedgerError::db("open the SQLite ledger"))
}

#[cfg(feature = "postgres")]
pub(crate) async fn open_postgres(cfg: &LedgerConfig) -> Result<Backend, LedgerError> {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use sqlx::{ConnectOptions, Connection};

    let mut opts = PgConnectOptions::from_str(cfg.url.trim()).map_err(|e| LedgerError::Config {
        field: "url",
        message: format!("not a usable postgres URL ({e}); write postgres://user@host:port/database"),
    })?;
    let timeout = cfg.connect_timeout;
    let unreachable = |cause: String| LedgerError::Unreachable {
        url: redact_url(&cfg.url),
        timeout,
        cause,
    };
    // One connection first, on its own: it says why the server cannot be reached (refused,
    // no such host) at once, where the pool would retry until its timeout and then say only
    // that it timed out.
    let mut conn = match tokio::time::timeout(timeout, opts.connect()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_)))) => return Err(unreachable(e.to_string())),
        Ok(Err(e)) => return Err(LedgerError::db("connect to PostgreSQL")(e)),
        Err(_) => return Err(unreachable("no answer".into())),
    };
    if let Some(schema) = &cfg.pg_schema {
        // validated above: only [a-z0-9_], so quoting is safe
        if cfg.migrate {
            sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .execute(&mut conn)
                .await
                .map_err(LedgerError::db("create the ledger schema"))?;
        }
        opts = opts.options([("search_path", schema.as_str())]);
    }
    conn.close().await.map_err(LedgerError::db("connect to PostgreSQL"))?;
    let pool = PgPoolOptions::new()
        .max_connections(cfg.max_connections)
        .acquire_timeout(timeout)
        .connect_with(opts)
        .await
        .map_err(|e| match e {
            sqlx::Error::PoolTimedOut => unreachable("no connection from the pool".into()),
            e @ (sqlx::Error::Io(_) | sqlx::Error::Tls(_)) => unreachable(e.to_string()),
            e => LedgerError::db("connect to PostgreSQL")(e),
        })?;
    if cfg.migrate {
        migrator(&[
            (
                1,
                "jobs and ops",
                include_str!("../../migrations/postgres/0001_jobs_and_ops.sql"),
            ),
            (
                2,
                "resolver answers",
                include_str!("../../migrations/postgres/0002_resolver_answers.sql"),
            ),
            (
                3,
                "lease indexes",
                include_str!("../../migrations/postgres/0003_lease_indexes.sql"),
            ),
        ])
        .run(&pool)
        .await?;
    }
    Ok(Backend::Postgres(pool))
}

#[cfg(not(feature = "postgres"))]
pub(crate) async fn open_postgres(_cfg: &LedgerConfig) -> Result<Backend, LedgerError> {
    Err(LedgerError::Config {
        field: "url",
        message: "a postgres:// ledger needs contentdownload built with the `postgres` feature".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let mut c = LedgerConfig::new("x.db");
        c.pg_schema = Some("Bad-Name".into());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("pg_schema"), "{e}");
        let e = LedgerConfig::new(" ").validate().unwrap_err().to_string();
        assert!(e.contains("url"), "{e}");
        assert!(LedgerConfig::new("postgresql://h/db").is_postgres());
        assert!(!LedgerConfig::in_dir("/tmp/out").is_postgres());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgresql://u:p%40ss@h:5/db?sslmode=require&password=x"),
            "postgresql://u:REDACTED@h:5/db?sslmode=require&password=REDACTED"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("/tmp/out/ledger.sqlite"), "/tmp/out/ledger.sqlite");
        // (a SQLite path, so that the check does not depend on the `postgres` feature)
        let path = std::env::temp_dir().join("ledger.sqlite");
        let e = LedgerConfig {
            connect_timeout: Duration::ZERO,
            ..LedgerConfig::new(path.display().to_string())
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("connect_timeout"), "{e}");
    }

    #[test]
    fn the_clock_moves_forward_when_told() {
        let c = LedgerClock::default();
        let a = c.now_ms();
        c.clone().advance(Duration::from_secs(60));
        assert!(c.now_ms() >= a + 60_000);
    }
}
