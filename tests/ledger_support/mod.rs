//! Shared by the ledger tests: one ledger per backend, isolated per test.
//!
//! SQLite gets a fresh file in a temporary folder. PostgreSQL (feature `postgres`) gets a
//! fresh schema in the database named by `CONTENTDOWNLOAD_TEST_POSTGRES_URL`; when that is
//! unset the PostgreSQL half is skipped with a `SKIPPED-POSTGRES <test>` line in the test
//! output, unless `CONTENTDOWNLOAD_REQUIRE_POSTGRES=1` (as in CI), which turns a missing or
//! unreachable server into a failure (and `.ci/run` also fails on any such line).
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use contentdownload::ledger::{Ledger, LedgerConfig};

pub const PG_URL_VAR: &str = "CONTENTDOWNLOAD_TEST_POSTGRES_URL";
pub const PG_REQUIRE_VAR: &str = "CONTENTDOWNLOAD_REQUIRE_POSTGRES";

/// A ledger under test, with what keeps it alive (its temporary folder).
pub struct TestLedger {
    pub ledger: Ledger,
    pub config: LedgerConfig,
    pub name: &'static str,
    _dir: Option<tempfile::TempDir>,
}

/// The marker at the start of the line a test prints when it skips its PostgreSQL half;
/// `.ci/run` fails when the test output holds it.
pub const PG_SKIP_MARKER: &str = "SKIPPED-POSTGRES";

/// The PostgreSQL URL to test against, or `None` when it may be skipped: then `test` says
/// so in a line of the test output (written to the process's stderr directly, past the
/// test harness's capture, so that it shows without `--nocapture`). With
/// `CONTENTDOWNLOAD_REQUIRE_POSTGRES=1` (CI) a skip is a failure instead.
pub fn pg_url(test: &str) -> Option<String> {
    let require = std::env::var(PG_REQUIRE_VAR).is_ok_and(|v| v == "1");
    let url = std::env::var(PG_URL_VAR).ok().filter(|u| !u.trim().is_empty());
    let why = match url {
        Some(_) if !cfg!(feature = "postgres") => {
            assert!(
                !require,
                "{PG_REQUIRE_VAR}=1 but the tests were built without the `postgres` feature"
            );
            format!("{PG_URL_VAR} is set but the `postgres` feature is off")
        }
        Some(u) => return Some(u),
        None => {
            assert!(
                !require,
                "{PG_REQUIRE_VAR}=1 but {PG_URL_VAR} is unset: start PostgreSQL and export its URL"
            );
            format!("{PG_URL_VAR} is unset")
        }
    };
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "{PG_SKIP_MARKER} {test}: {why}; its PostgreSQL half did not run"
    );
    None
}

/// A schema name no other test (or earlier run) uses.
pub fn unique_schema(test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let clean: String = test
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    format!(
        "t_{clean}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The configurations of both backends for `test` (PostgreSQL only when available); the
/// temporary folder for SQLite comes along.
pub fn configs(test: &str) -> Vec<(&'static str, LedgerConfig, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("create a temporary folder");
    let mut out = vec![("sqlite", LedgerConfig::in_dir(dir.path()), Some(dir))];
    if let Some(url) = pg_url(test) {
        let mut cfg = LedgerConfig::new(url);
        cfg.pg_schema = Some(unique_schema(test));
        out.push(("postgres", cfg, None));
    }
    out
}

/// One open ledger per backend for `test`, each configured by `tweak`.
pub async fn backends_with(test: &str, tweak: impl Fn(&mut LedgerConfig)) -> Vec<TestLedger> {
    let mut out = Vec::new();
    for (name, mut config, dir) in configs(test) {
        tweak(&mut config);
        let ledger = match Ledger::connect(config.clone()).await {
            Ok(l) => l,
            Err(e) => panic!("open the {name} ledger at {}: {e}", config.url),
        };
        assert_eq!(ledger.backend_name(), name);
        out.push(TestLedger {
            ledger,
            config,
            name,
            _dir: dir,
        });
    }
    out
}

/// One open ledger per backend for `test`, with the default configuration.
pub async fn backends(test: &str) -> Vec<TestLedger> {
    backends_with(test, |_| {}).await
}
