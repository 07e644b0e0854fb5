//! The bulk benchmark of DESIGN's targets (issue 14): N PDFs of S bytes served by a real
//! nginx on loopback, fetched by the runner binary (SQLite ledger, manifest, attempts.csv,
//! payload checks, SHA-256, the full stack of layers) once per `--durability`, and by curl
//! at the same concurrency, then a markdown table: files/s, CPU (user + system) per file,
//! peak RSS, each as a ratio to curl.
//!
//! ```sh
//! cargo build --release            # the runner binary the bench starts
//! cargo run --release --example bulk_bench --features simulator
//! cargo run --release --example bulk_bench --features simulator -- \
//!     --files 10000 --size 102400 --concurrency 16 --durability batch,file,none --rounds 3
//! sudo target/release/examples/bulk_bench --drop-caches --rounds 3   # steadier, see below
//! ```
//!
//! One large PDF (issue 14's 1 GiB case, peak RSS included):
//!
//! ```sh
//! cargo run --release --example bulk_bench -- --files 1 --size 1073741824 --concurrency 1 --rounds 3
//! ```
//!
//! Defaults: 10,000 files of 102,400 bytes, concurrency 16, durability `batch,file,none`,
//! one round. nginx (`/usr/sbin/nginx`, one worker, `sendfile`, no access log) serves a
//! temporary docroot; the bench starts it with a temporary configuration and kills it at
//! the end (`apt-get install nginx`). Each round runs, one after the other: `xargs -P C
//! -n 50 curl --remote-name-all` (issue 14's baseline), the same followed by GNU `sync --
//! *.pdf .` (`curl + fsync`: an fsync of each file and of the folder, the like-for-like
//! baseline for the runner's durable modes, whose files are on disk before the ledger says
//! FINALIZED; plain curl leaves them in the page cache), `curl --parallel --parallel-max C`
//! (one curl process), then the runner with each durability; rounds alternate so that the
//! machine's other load falls on all sides alike. Every tool writes into a fresh folder,
//! and nothing is deleted before the end (on ext4, making files soon after deleting many
//! costs the next tool a scan of the deleted inodes), so the bench needs the disk space of
//! `files x size x tools x rounds` (6 GB a round with the defaults); with at most 10 files,
//! each tool's output is deleted once measured. After each tool, untimed, its file system
//! is synced, so what one tool left in the page cache is not written back during the
//! next one's run. Nothing is dropped from the page cache between runs: all sides read the
//! same warm docroot.
//!
//! The runner is the `contentdownload` binary next to the example's folder
//! (`target/release/contentdownload` for a release example) or `--bin PATH`; it runs with
//! `--workers C --max-per-host C` and a rate for the nginx host far above what loopback
//! can do (the point is the runner's cost, not politeness). Its usual `DOCSTOKG_*`
//! variables apply (`DOCSTOKG_ENABLE_IDEMPOTENCY=false`: no ledger).
//!
//! Every tool runs under `/usr/bin/time` (GNU time): wall time is measured here, user and
//! system CPU time are the process's and its waited-for children's, and peak RSS is the
//! largest single process's (for `xargs` + curl, one curl's). `BULK_BENCH_KEEP=1` keeps
//! the temporary folder and prints where it is. `--drop-caches` (root) starts every tool
//! from the same memory: dirty pages written back, the page cache dropped, the docroot read
//! back in (see `drop_caches`); the steadiest numbers on a small machine.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use contentdownload::download::Durability;

mod bench_support;

use bench_support::servers::Nginx;

struct Args {
    files: usize,
    size: u64,
    concurrency: usize,
    durability: Vec<Durability>,
    rounds: usize,
    bin: Option<PathBuf>,
    drop_caches: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        files: 10_000,
        size: 102_400,
        concurrency: 16,
        durability: vec![Durability::Batch, Durability::File, Durability::None],
        rounds: 1,
        bin: None,
        drop_caches: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--drop-caches" {
            args.drop_caches = true;
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |what: &str| {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} takes a whole number of {what}, got {value:?}"))
        };
        match flag.as_str() {
            "--files" => args.files = number("files")? as usize,
            "--size" => args.size = number("bytes")?,
            "--concurrency" => args.concurrency = number("downloads at once")? as usize,
            "--rounds" => args.rounds = number("rounds")? as usize,
            "--durability" => {
                args.durability = value.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--bin" => args.bin = Some(PathBuf::from(value)),
            other => {
                return Err(format!(
                    "unknown argument {other:?}: use --files N --size BYTES --concurrency C \
                     --durability batch,file,none --rounds R --bin PATH --drop-caches"
                ))
            }
        }
    }
    if args.files == 0 || args.rounds == 0 || args.durability.is_empty() {
        return Err("--files, --rounds and --durability need at least one".into());
    }
    if args.size < 1024 {
        return Err("--size must be at least 1024 bytes (smaller payloads fail the PDF checks)".into());
    }
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(args)
}

/// One measured run.
struct Row {
    tool: String,
    round: usize,
    files: usize,
    bytes: u64,
    wall: Duration,
    user_s: f64,
    sys_s: f64,
    peak_rss_kib: u64,
}

impl Row {
    fn files_per_sec(&self) -> f64 {
        self.files as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn cpu_ms_per_file(&self) -> f64 {
        (self.user_s + self.sys_s) * 1e3 / self.files.max(1) as f64
    }
}

/// Up to this many files, a tool's output is deleted once measured.
const FEW: usize = 10;

fn work_id(i: usize) -> String {
    format!("W{}", 1_000_000 + i)
}

fn url(port: u16, i: usize) -> String {
    format!("http://127.0.0.1:{port}/pdf/{}.pdf", work_id(i))
}

/// The docroot: `n` PDFs of `size` bytes (the same bytes each) under `www/pdf/`, written
/// in pieces of at most 1 MiB (a 1 GiB PDF is never in memory).
fn write_docroot(www: &Path, n: usize, size: u64) -> std::io::Result<()> {
    let dir = www.join("pdf");
    std::fs::create_dir_all(&dir)?;
    let head = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n";
    let tail = b"\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n";
    let filler = vec![b'0'; (size as usize).min(1 << 20)];
    for i in 0..n {
        let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join(format!("{}.pdf", work_id(i))))?);
        file.write_all(head)?;
        let mut left = size - (head.len() + tail.len()) as u64;
        while left > 0 {
            let piece = left.min(filler.len() as u64) as usize;
            file.write_all(&filler[..piece])?;
            left -= piece as u64;
        }
        file.write_all(tail)?;
        file.flush()?;
    }
    Ok(())
}

fn write_works(path: &Path, port: u16, n: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        let record = serde_json::json!({
            "id": format!("https://openalex.org/{}", work_id(i)),
            "title": format!("Benchmark work {i}"),
            "best_oa_location": {"pdf_url": url(port, i)},
            "open_access": {"is_oa": true},
        });
        writeln!(out, "{record}")?;
    }
    out.flush()
}

/// Files in `dir` (not in sub-folders) named `*.pdf` of exactly `size` bytes, and their
/// total size.
fn landed(dir: &Path, size: u64) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0);
    };
    let mut count = 0;
    let mut bytes = 0;
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(m) if m.is_file() && m.len() == size && entry.path().extension().is_some_and(|e| e == "pdf") => {
                count += 1;
                bytes += m.len();
            }
            _ => {}
        }
    }
    (count, bytes)
}

/// Writes back the dirty data of `dir`'s file system (GNU `sync -f`), untimed.
fn sync_file_system(dir: &Path) -> Result<(), String> {
    let status = std::process::Command::new("sync")
        .arg("-f")
        .arg(dir)
        .status()
        .map_err(|e| format!("could not run sync: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("sync -f {} ended with {status}", dir.display()))
    }
}

/// `--drop-caches`, before each tool (untimed): writes back every dirty page, drops the
/// page cache (`/proc/sys/vm/drop_caches`, root only), then reads the docroot back in, so
/// that every tool starts with the same memory: the docroot cached, nothing of an earlier
/// tool's output left to write back or to reclaim. Without it, the kernel's reclaim of the
/// gigabytes earlier tools wrote lands on whichever tool runs when memory runs short (on
/// this 2-core VM the same tool's system time varied 2-3x between rounds).
fn drop_caches(www: &Path) -> Result<(), String> {
    std::process::Command::new("sync")
        .status()
        .map_err(|e| format!("could not run sync: {e}"))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .map_err(|e| format!("--drop-caches: cannot write /proc/sys/vm/drop_caches (needs root): {e}"))?;
    let mut warmed = 0u64;
    for entry in std::fs::read_dir(www.join("pdf")).map_err(|e| format!("reading the docroot: {e}"))? {
        let path = entry.map_err(|e| e.to_string())?.path();
        warmed += std::fs::read(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?
            .len() as u64;
    }
    if warmed == 0 {
        return Err("--drop-caches: the docroot is empty".into());
    }
    Ok(())
}

/// The runner binary: `--bin`, or `contentdownload` in the folder above the example's.
fn runner_bin(args: &Args) -> Result<PathBuf, String> {
    if let Some(bin) = &args.bin {
        return Ok(bin.clone());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(format!("contentdownload{}", std::env::consts::EXE_SUFFIX)))
        .ok_or("cannot tell where the runner binary is; use --bin PATH")?;
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no runner binary at {} (build it with `cargo build --release`, or use --bin PATH)",
            bin.display()
        ))
    }
}

/// Runs `program args` under GNU time in `cwd`, with `stdin` fed to it; returns the wall
/// time, user and system CPU seconds and peak RSS in KiB.
async fn timed(
    program: &Path,
    args: &[String],
    cwd: &Path,
    stdin: Option<Vec<u8>>,
    scratch: &Path,
) -> Result<(Duration, f64, f64, u64), String> {
    let report = scratch.join("time.out");
    let mut command = tokio::process::Command::new("/usr/bin/time");
    command
        .arg("-f")
        .arg("%U %S %M")
        .arg("-o")
        .arg(&report)
        .arg(program)
        .args(args)
        .current_dir(cwd)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .map_err(|e| format!("could not start {}: {e}", program.display()))?;
    if let Some(input) = stdin {
        use tokio::io::AsyncWriteExt;
        let mut pipe = child.stdin.take().ok_or("no stdin pipe")?;
        pipe.write_all(&input).await.map_err(|e| e.to_string())?;
        drop(pipe);
    }
    let output = child.wait_with_output().await.map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    if !output.status.success() {
        eprintln!(
            "{} ended with {}: {}",
            program.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let text = std::fs::read_to_string(&report).map_err(|e| format!("reading GNU time's report: {e}"))?;
    let last = text.lines().last().unwrap_or("");
    let mut fields = last.split_whitespace().map(str::parse::<f64>);
    match (fields.next(), fields.next(), fields.next()) {
        (Some(Ok(user)), Some(Ok(sys)), Some(Ok(rss))) => Ok((wall, user, sys, rss as u64)),
        _ => Err(format!("GNU time's report is not `user sys rss`: {text:?}")),
    }
}

struct Setup {
    tmp: PathBuf,
    works: PathBuf,
    port: u16,
    bin: PathBuf,
}

async fn run_tool(args: &Args, setup: &Setup, tool: &str, round: usize) -> Result<Row, String> {
    let out = setup.tmp.join(format!("out-{round}-{}", tool.replace(' ', "-")));
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let c = args.concurrency.to_string();
    let urls = || {
        (0..args.files)
            .map(|i| url(setup.port, i) + "\n")
            .collect::<String>()
            .into_bytes()
    };
    let curl_args = "--silent --show-error --fail --remote-name-all";
    let (program, argv, stdin): (PathBuf, Vec<String>, Option<Vec<u8>>) = match tool {
        // the like-for-like baseline for a durable download: the same curls, then an fsync
        // of every file and of the folder (GNU `sync FILE...`), as `--durability file` does
        // and before which `batch` records nothing as FINALIZED
        "curl + fsync" => (
            PathBuf::from("sh"),
            vec![
                "-c".into(),
                format!("xargs -P {c} -n 50 curl {curl_args} && sync -- *.pdf ."),
            ],
            Some(urls()),
        ),
        "xargs curl" => (
            PathBuf::from("xargs"),
            [
                "-P",
                &c,
                "-n",
                "50",
                "curl",
                "--silent",
                "--show-error",
                "--fail",
                "--remote-name-all",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            Some(urls()),
        ),
        "curl --parallel" => {
            let config = setup.tmp.join("curl.cfg");
            std::fs::write(
                &config,
                (0..args.files)
                    .map(|i| format!("url = \"{}\"\n", url(setup.port, i)))
                    .collect::<String>(),
            )
            .map_err(|e| e.to_string())?;
            let argv = vec![
                "--parallel".into(),
                "--parallel-max".into(),
                c.clone(),
                "--silent".into(),
                "--show-error".into(),
                "--fail".into(),
                "--remote-name-all".into(),
                "--config".into(),
                config.display().to_string(),
            ];
            (PathBuf::from("curl"), argv, None)
        }
        _ => {
            let durability = tool.trim_start_matches("runner ");
            let argv = vec![
                "run".into(),
                "--input".into(),
                setup.works.display().to_string(),
                "--out".into(),
                out.display().to_string(),
                "--workers".into(),
                c.clone(),
                "--max-per-host".into(),
                c.clone(),
                "--rate".into(),
                format!("127.0.0.1:{}=1000000:1000", setup.port),
                "--durability".into(),
                durability.into(),
                "--quiet".into(),
            ];
            (setup.bin.clone(), argv, None)
        }
    };
    let (wall, user_s, sys_s, peak_rss_kib) = timed(&program, &argv, &out, stdin, &setup.tmp).await?;
    let (files, bytes) = landed(&out, args.size);
    // Untimed: a few large files are deleted at once (the disk space is per byte; the cost
    // of deleting, below, is per file), then what the tool left in the page cache (and the
    // deletion's metadata) is written back now, so that it does not land during the next
    // tool's run (a runner's sync would wait for another tool's gigabyte).
    if args.files <= FEW {
        std::fs::remove_dir_all(&out).map_err(|e| format!("removing {}: {e}", out.display()))?;
    }
    sync_file_system(&setup.tmp)?;
    // Kept until the end: ext4 skips inodes deleted in the last minute when it makes new
    // files (`recently_deleted`), so deleting 10,000 files before the next tool's run would
    // make that tool pay for a scan of them.
    Ok(Row {
        tool: tool.to_owned(),
        round,
        files,
        bytes,
        wall,
        user_s,
        sys_s,
        peak_rss_kib,
    })
}

fn print_table(rows: &[Row]) {
    println!(
        "| tool | round | files | MB | wall s | files/s | ratio to xargs curl | ratio to curl + fsync | CPU user s | CPU sys s | CPU ms/file | CPU ratio to xargs curl | peak RSS MiB |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let base = |tool: &str| rows.iter().find(|r| r.round == row.round && r.tool == tool);
        let ratio_to = |base: Option<&Row>, f: fn(&Row) -> f64| {
            base.map_or_else(|| "n/a".to_owned(), |c| format!("{:.2}", f(row) / f(c)))
        };
        let (curl, synced) = (base("xargs curl"), base("curl + fsync"));
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {} | {} | {} | {:.2} | {:.2} | {:.3} | {} | {:.1} |",
            row.tool,
            row.round,
            row.files,
            row.bytes as f64 / 1e6,
            row.wall.as_secs_f64(),
            if row.files_per_sec() < 100.0 {
                format!("{:.2}", row.files_per_sec())
            } else {
                format!("{:.0}", row.files_per_sec())
            },
            ratio_to(curl, Row::files_per_sec),
            ratio_to(synced, Row::files_per_sec),
            row.user_s,
            row.sys_s,
            row.cpu_ms_per_file(),
            ratio_to(curl, Row::cpu_ms_per_file),
            row.peak_rss_kib as f64 / 1024.0
        );
    }
}

fn main() -> ExitCode {
    bench_support::main("bulk_bench", parse_args, bench)
}

async fn bench(args: Args) -> Result<(), String> {
    let bin = runner_bin(&args)?;
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let www = tmp.path().join("www");
    write_docroot(&www, args.files, args.size).map_err(|e| format!("writing the docroot: {e}"))?;
    sync_file_system(&www)?;
    let mut nginx = Nginx::start(tmp.path(), &www, 1)?;
    let works = tmp.path().join("works.jsonl");
    write_works(&works, nginx.port, args.files).map_err(|e| format!("writing {}: {e}", works.display()))?;
    let tools_per_round = 3 + args.durability.len();
    let kept = if args.files <= FEW {
        1
    } else {
        tools_per_round * args.rounds
    };
    let need = args.files as u64 * args.size * (kept + 1) as u64;
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "bulk_bench: {} files of {} bytes, concurrency {}, {} CPU(s), nginx on 127.0.0.1:{}, load average {}, \
         {:.1} GB of disk in {}",
        args.files,
        args.size,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nginx.port,
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        need as f64 / 1e9,
        tmp.path().display()
    );
    let setup = Setup {
        tmp: tmp.path().to_owned(),
        works,
        port: nginx.port,
        bin,
    };
    let mut tools: Vec<String> = vec!["xargs curl".into(), "curl + fsync".into(), "curl --parallel".into()];
    tools.extend(args.durability.iter().map(|d| format!("runner {d}")));
    let mut rows = Vec::new();
    for round in 1..=args.rounds {
        for tool in &tools {
            nginx.server().check_alive()?;
            if args.drop_caches {
                drop_caches(&www)?;
            }
            rows.push(run_tool(&args, &setup, tool, round).await?);
        }
    }
    println!();
    print_table(&rows);
    if std::env::var_os("BULK_BENCH_KEEP").is_some() {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}
