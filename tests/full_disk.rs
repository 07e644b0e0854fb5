//! A full disk, as a user meets it: the runner's `--out` (PDFs, ledger, manifest,
//! attempts.csv, learned state) on a real file system that fills up mid-run, a 1.5 MB
//! tmpfs. The run must stop with a clear message and the "run again later" exit code (3),
//! without a flood of warnings; once there is room, the same command finishes every work,
//! and every PDF on disk is whole.
//!
//! The same with a PostgreSQL ledger whose tables live in a tablespace on a small tmpfs
//! (the server's own disk filling up): PostgreSQL answers `disk_full` (SQLSTATE 53100),
//! and the runner must say so and exit 3 just the same.
//!
//! Mounting a tmpfs needs root (CI runs as root); where it cannot be mounted the test prints
//! a `SKIPPED-TMPFS` line and passes.
#![cfg(feature = "simulator")]

use std::path::{Path, PathBuf};
use std::process::Command;

use contentdownload::simulator::{Reply, Simulator};

mod bin_support;
#[cfg(feature = "postgres")]
mod ledger_support;
use bin_support::contentdownload;

const WORKS: usize = 40;
const PDF_BYTES: u64 = 100 * 1024;

/// A tmpfs mounted on a folder, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB on `path`, or says why not.
    fn mount(path: &Path, kib: u64) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(path).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
        }
        Ok(Tmpfs { path: path.to_owned() })
    }

    /// Grows it to `kib` KiB, keeping its files.
    fn resize(&self, kib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "remount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// `(name, size)` of the PDFs in `dir`.
fn pdfs(dir: &Path) -> Vec<(String, u64)> {
    let mut found: Vec<(String, u64)> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "pdf"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Every PDF in `found` has its whole `size`: none was left cut short.
fn all_whole(found: &[(String, u64)], size: u64) {
    for (name, len) in found {
        assert_eq!(*len, size, "{name} is cut short");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_run_cleanly_and_the_rerun_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let disk = match Tmpfs::mount(&out, 1500) {
        Ok(d) => d,
        Err(why) => {
            println!("SKIPPED-TMPFS a_full_disk_stops_the_run_cleanly_and_the_rerun_finishes_it: {why}");
            return;
        }
    };
    let sim = Simulator::start().await.unwrap();
    sim.on("/pdf/*", [Reply::pdf(PDF_BYTES)]);
    let input = dir.path().join("works.jsonl");
    bin_support::write_works(&input, WORKS, |i| sim.url(&format!("/pdf/{i}.pdf")));
    let rate = format!("{}=1000:100", sim.addr());
    let args = [
        "run",
        "--input",
        input.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--mailto",
        "ci@example.org",
        "--fallback-tier",
        "direct=openalex",
        "--rate",
        &rate,
    ];

    // 40 PDFs of 100 KiB do not fit in 1.5 MB
    let first = contentdownload(&args, &[]).await;
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert_eq!(
        first.status.code(),
        Some(3),
        "a full disk is a reason to run again later:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.matches("stopping the run").count() <= 1,
        "what stopped the run is told once:\n{stderr}"
    );
    let warnings = stderr.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(
        warnings <= 12,
        "{warnings} warnings: the full disk is told once, not per record:\n{stderr}"
    );
    let whole_after_first = pdfs(&out);
    assert!(whole_after_first.len() < WORKS, "everything fit: {whole_after_first:?}");
    all_whole(&whole_after_first, PDF_BYTES);

    // room again: the same command finishes the rest, and each work is fetched once
    disk.resize(64 * 1024);
    let fetched_before = sim.count("/pdf/*");
    let second = contentdownload(&args, &[]).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    let landed = pdfs(&out);
    assert_eq!(landed.len(), WORKS, "{landed:?}");
    all_whole(&landed, PDF_BYTES);
    // a PDF the first run left whole is taken as it is, not fetched again
    let refetched = sim.count("/pdf/*") - fetched_before;
    assert_eq!(
        refetched,
        WORKS - whole_after_first.len(),
        "the rerun fetched {refetched} PDFs; {} were whole on disk",
        whole_after_first.len()
    );

    // and a third run has nothing left to do
    let fetched_before = sim.count("/pdf/*");
    let third = contentdownload(&args, &[]).await;
    assert_eq!(
        third.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&third.stderr)
    );
    assert_eq!(sim.count("/pdf/*"), fetched_before, "the third run fetched PDFs again");
    drop(disk);
}

/// A ledger on a PostgreSQL server whose disk fills up: the server is on this machine (as
/// in CI), the ledger's database gets its tables in a tablespace on a small tmpfs
/// (`options[default_tablespace]` in the `--ledger` URL, so the database and the rest of
/// the server are untouched), and the run must stop with exit code 3 and the full-disk
/// line; once the tmpfs has room, the same command finishes every work, fetching only the
/// PDFs not already whole on disk.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_postgres_disk_stops_the_run_cleanly_and_the_rerun_finishes_it() {
    use futures_util::FutureExt;
    use sqlx::{Connection, Executor};
    use std::os::unix::fs::MetadataExt;

    const TEST: &str = "a_full_postgres_disk_stops_the_run_cleanly";
    let Some(url) = ledger_support::pg_url(TEST) else {
        return;
    };
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .expect("the test server answers");
    let dir = tempfile::tempdir().unwrap();
    let space_dir = dir.path().join("tablespace");
    let space = match Tmpfs::mount(&space_dir, 256) {
        Ok(d) => d,
        Err(why) => {
            println!("SKIPPED-TMPFS {TEST}: {why}");
            return;
        }
    };
    // the tablespace's folder belongs to the server's user, as its data folder does
    let data_dir: (String,) = sqlx::query_as("SELECT current_setting('data_directory')")
        .fetch_one(&mut admin)
        .await
        .expect("the test user is a superuser (it creates tablespaces)");
    let owner = std::fs::metadata(&data_dir.0).expect("the server runs on this machine");
    std::os::unix::fs::chown(&space_dir, Some(owner.uid()), Some(owner.gid())).unwrap();
    let name = ledger_support::unique_schema("full_disk");
    admin
        .execute(format!("CREATE TABLESPACE {name} LOCATION '{}'", space_dir.display()).as_str())
        .await
        .unwrap();
    admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
    let base = url.split('?').next().unwrap_or(&url);
    let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
    let ledger = format!("{server}/{name}?options[default_tablespace]={name}");

    // the checks, caught so that the database and its tablespace are dropped whatever
    // happens: a tmpfs unmounted under a tablespace the server still holds would leave its
    // checkpoints failing for every later test
    let checked = std::panic::AssertUnwindSafe(async {
        let sim = Simulator::start().await.unwrap();
        sim.on("/pdf/*", [Reply::pdf(2048)]);
        let input = dir.path().join("works.jsonl");
        const MANY: usize = 1500;
        bin_support::write_works(&input, MANY, |i| sim.url(&format!("/pdf/{i}.pdf")));
        let out = dir.path().join("out");
        let rate = format!("{}=100000:1000", sim.addr());
        let args = [
            "run",
            "--input",
            input.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--ledger",
            &ledger,
            "--quiet",
            "--mailto",
            "ci@example.org",
            "--fallback-tier",
            "direct=openalex",
            "--rate",
            &rate,
            "--workers",
            "16",
        ];

        // the ledger's rows for 1,500 works do not fit in 256 KiB
        let first = contentdownload(&args, &[]).await;
        let stderr = String::from_utf8_lossy(&first.stderr);
        assert_eq!(
            first.status.code(),
            Some(3),
            "a full disk on the ledger's server is a reason to run again later:\n{stderr}"
        );
        assert!(stderr.contains("the disk is full"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(
            stderr.matches("stopping the run").count(),
            1,
            "what stopped the run is told once:\n{stderr}"
        );
        let whole_after_first = pdfs(&out);
        assert!(whole_after_first.len() < MANY, "everything fit");
        all_whole(&whole_after_first, 2048);

        // room again: the same command finishes the rest, each PDF fetched once in all
        space.resize(64 * 1024);
        let fetched_before = sim.count("/pdf/*");
        let second = contentdownload(&args, &[]).await;
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(0), "{stderr}");
        assert_eq!(pdfs(&out).len(), MANY);
        let refetched = sim.count("/pdf/*") - fetched_before;
        assert_eq!(
            refetched,
            MANY - whole_after_first.len(),
            "the rerun fetched {refetched} PDFs; {} were whole on disk",
            whole_after_first.len()
        );
    })
    .catch_unwind()
    .await;

    space.resize(64 * 1024);
    let dropped = async {
        admin
            .execute(format!("DROP DATABASE {name} WITH (FORCE)").as_str())
            .await?;
        admin.execute(format!("DROP TABLESPACE {name}").as_str()).await
    }
    .await;
    match dropped {
        Ok(_) => drop(space),
        Err(e) => {
            // left mounted rather than pulled from under the server
            eprintln!("{TEST}: could not drop the test database and tablespace {name}: {e}");
            std::mem::forget(space);
        }
    }
    if let Err(panic) = checked {
        std::panic::resume_unwind(panic);
    }
}
