//! A full disk, as a user meets it: the runner's `--out` (PDFs, ledger, manifest,
//! attempts.csv, learned state) on a real file system that fills up mid-run, a 1.5 MB
//! tmpfs. The run must stop with a clear message and the "run again later" exit code (3),
//! without a flood of warnings; once there is room, the same command finishes every work,
//! and every PDF on disk is whole.
//!
//! Mounting a tmpfs needs root (CI runs as root); where it cannot be mounted the test prints
//! a `SKIPPED-TMPFS` line and passes.
#![cfg(feature = "simulator")]

use std::path::{Path, PathBuf};
use std::process::Command;

use contentdownload::simulator::{Reply, Simulator};

mod bin_support;
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
    let warnings = stderr.lines().filter(|l| l.contains(" WARN ")).count();
    assert!(
        warnings <= 12,
        "{warnings} warnings: the full disk is told once, not per record:\n{stderr}"
    );
    let whole_after_first = pdfs(&out);
    assert!(whole_after_first.len() < WORKS, "everything fit: {whole_after_first:?}");
    for (name, size) in &whole_after_first {
        assert_eq!(*size, PDF_BYTES, "{name} is cut short");
    }

    // room again: the same command finishes the rest, and each work is fetched once
    disk.resize(64 * 1024);
    let fetched_before = sim.count("/pdf/*");
    let second = contentdownload(&args, &[]).await;
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(0), "{stderr}");
    let landed = pdfs(&out);
    assert_eq!(landed.len(), WORKS, "{landed:?}");
    for (name, size) in &landed {
        assert_eq!(*size, PDF_BYTES, "{name}");
    }
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
