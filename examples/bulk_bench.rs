//! The bulk benchmark of DESIGN's targets: N PDFs of S bytes from a loopback server, once
//! through the real runner (`runner::exec::run`: SQLite ledger, manifest, attempts.csv,
//! payload checks, SHA-256, fsync + rename, the full stack of layers) and once with
//! `curl --parallel --parallel-max C` at the same concurrency, then a markdown table.
//!
//! ```sh
//! cargo run --release --example bulk_bench --features simulator
//! cargo run --release --example bulk_bench --features simulator -- --files 1000 --size 102400 --concurrency 8
//! ```
//!
//! Defaults: 10,000 files of 102,400 bytes, concurrency 8 (the runner's default
//! `--workers`). Each work has one open-access PDF URL on the simulator, so the runner's
//! concurrency is its worker count. The per-host rate limit for the simulator is set far
//! above what loopback can do (`--rate 127.0.0.1:<port>=1000000:1000`): the point is the
//! pipeline's overhead, not politeness. Both tools fetch from the same in-process
//! simulator (HTTP/1.1 over loopback) into temporary folders that are deleted at the end.
//!
//! The runner reads its usual `DOCSTOKG_*` variables, so a gate can be switched off to see
//! what it costs (`DOCSTOKG_ENABLE_IDEMPOTENCY=false`: no ledger). `RUST_LOG=info` shows
//! the runner's logs on stderr; `BULK_BENCH_KEEP=1` keeps the temporary folder (output,
//! ledger, manifest) and prints where it is.
//!
//! Peak RSS: for the runner, this process's `VmHWM` (runner and simulator together, reset
//! before the run where the kernel allows); for curl, its own maximum RSS from
//! `/usr/bin/time` when that is installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use contentdownload::resolvers::RESOLVER_NAMES;
use contentdownload::runner::exec::{self, Exit};
use contentdownload::runner::{Cli, Command, RunSettings};
use contentdownload::simulator::{Reply, Simulator};

mod bench_support;

struct Args {
    files: usize,
    size: u64,
    concurrency: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        files: 10_000,
        size: 102_400,
        concurrency: 8,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
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
            other => {
                return Err(format!(
                    "unknown argument {other:?}: use --files N --size BYTES --concurrency C"
                ))
            }
        }
    }
    if args.files == 0 {
        return Err("--files must be at least 1".into());
    }
    if args.size < 1024 {
        return Err("--size must be at least 1024 bytes (smaller payloads fail the PDF checks)".into());
    }
    if args.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(args)
}

/// One row of the table.
struct Row {
    tool: &'static str,
    files: usize,
    bytes: u64,
    wall: Duration,
    peak_rss_kib: Option<u64>,
}

impl Row {
    fn files_per_sec(&self) -> f64 {
        self.files as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// `VmHWM` of this process in KiB.
fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0); false where that is not allowed.
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Files in `dir` (not in sub-folders) of exactly `size` bytes, and their total size.
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

fn work_id(i: usize) -> String {
    format!("W{}", 1_000_000 + i)
}

fn url(sim: &Simulator, i: usize) -> String {
    sim.url(&format!("/pdf/{}.pdf", work_id(i)))
}

fn write_works(path: &Path, sim: &Simulator, n: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        let record = serde_json::json!({
            "id": format!("https://openalex.org/{}", work_id(i)),
            "title": format!("Benchmark work {i}"),
            "best_oa_location": {"pdf_url": url(sim, i)},
            "open_access": {"is_oa": true},
        });
        writeln!(out, "{record}")?;
    }
    out.flush()
}

async fn run_pipeline(args: &Args, sim: &Simulator, works: &Path, out: &Path) -> Result<Row, String> {
    let port = sim.addr().port();
    let mut argv: Vec<String> = [
        "contentdownload",
        "run",
        "--input",
        &works.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--workers",
        &args.concurrency.to_string(),
        // as many connections to the one host as curl gets (the default cap is 4)
        "--max-per-host",
        &args.concurrency.to_string(),
        "--rate",
        &format!("127.0.0.1:{port}=1000000:1000"),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // No resolver is asked for these works (their URLs are in the records), but should one
    // be, it stays on loopback.
    for name in RESOLVER_NAMES {
        argv.push("--resolver-base".into());
        argv.push(format!("{name}={}", sim.url(&format!("/{name}"))));
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let Command::Run(run_args) = cli.command else {
        return Err("the runner did not parse a `run` command".into());
    };
    let settings = RunSettings::resolve(&run_args, exec::generated_run_id)?;
    let hwm_reset = reset_hwm();

    let started = Instant::now();
    let exit = exec::run(settings, std::future::pending())
        .await
        .map_err(|(code, message)| format!("the runner failed ({code:?}): {message}"))?;
    let wall = started.elapsed();
    if exit != Exit::Completed {
        return Err(format!("the runner ended with {exit:?}"));
    }
    let (files, bytes) = landed(out, args.size);
    Ok(Row {
        tool: "contentdownload run",
        files,
        bytes,
        wall,
        peak_rss_kib: if hwm_reset { vm_hwm_kib() } else { None },
    })
}

/// `curl --version` says 7.66 or later (the first with `--parallel`).
fn curl_has_parallel() -> Result<(), String> {
    let out = std::process::Command::new("curl")
        .arg("--version")
        .output()
        .map_err(|e| format!("curl not found ({e})"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().nth(1).unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) >= (7, 66) {
        Ok(())
    } else {
        Err(format!("curl {version:?} is older than 7.66 and has no --parallel"))
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

async fn run_curl(args: &Args, sim: &Simulator, dir: &Path, config: &Path) -> Result<Row, String> {
    curl_has_parallel()?;
    let mut cfg = std::io::BufWriter::new(std::fs::File::create(config).map_err(|e| e.to_string())?);
    for i in 0..args.files {
        let file = dir.join(format!("{}.pdf", work_id(i)));
        writeln!(
            cfg,
            "url = {}\noutput = {}",
            quoted(&url(sim, i)),
            quoted(&file.display().to_string())
        )
        .map_err(|e| e.to_string())?;
    }
    cfg.flush().map_err(|e| e.to_string())?;
    drop(cfg);

    let time = Path::new("/usr/bin/time");
    let rss_file = dir.with_extension("rss");
    let mut command = if time.is_file() {
        let mut c = tokio::process::Command::new(time);
        c.arg("-f").arg("%M").arg("-o").arg(&rss_file).arg("curl");
        c
    } else {
        tokio::process::Command::new("curl")
    };
    command
        .args(["--parallel", "--parallel-max"])
        .arg(args.concurrency.to_string())
        .args(["--silent", "--show-error", "--fail", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = command
        .spawn()
        .map_err(|e| format!("could not start curl: {e}"))?
        .wait_with_output()
        .await
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    if !output.status.success() {
        eprintln!(
            "curl ended with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .take(5)
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    let peak_rss_kib = std::fs::read_to_string(&rss_file)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()));
    let (files, bytes) = landed(dir, args.size);
    Ok(Row {
        tool: "curl --parallel",
        files,
        bytes,
        wall,
        peak_rss_kib,
    })
}

fn print_table(rows: &[Row], curl: Option<&Row>) {
    println!("| tool | files | total MB | wall s | files/s | MB/s | ratio to curl | peak RSS MiB |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for row in rows {
        let mb = row.bytes as f64 / 1e6;
        let secs = row.wall.as_secs_f64();
        let ratio = curl.map_or_else(
            || "n/a".to_owned(),
            |c| format!("{:.2}", row.files_per_sec() / c.files_per_sec()),
        );
        let rss = row
            .peak_rss_kib
            .map_or_else(|| "n/a".to_owned(), |k| format!("{:.0}", k as f64 / 1024.0));
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {} | {} |",
            row.tool,
            row.files,
            mb,
            secs,
            row.files_per_sec(),
            mb / secs.max(1e-9),
            ratio,
            rss
        );
    }
}

fn main() -> ExitCode {
    bench_support::main("bulk_bench", parse_args, bench)
}

async fn bench(args: Args) -> Result<(), String> {
    let sim = Simulator::start().await.map_err(|e| format!("simulator: {e}"))?;
    sim.on("/pdf/*", [Reply::pdf(args.size)]);
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let works = tmp.path().join("works.jsonl");
    write_works(&works, &sim, args.files).map_err(|e| format!("writing {}: {e}", works.display()))?;
    let pipeline_out: PathBuf = tmp.path().join("pipeline");
    let curl_out: PathBuf = tmp.path().join("curl");
    std::fs::create_dir_all(&curl_out).map_err(|e| e.to_string())?;
    println!(
        "bulk_bench: {} files of {} bytes, concurrency {}, {} CPU(s), loopback simulator at {}",
        args.files,
        args.size,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        sim.addr()
    );

    let pipeline = run_pipeline(&args, &sim, &works, &pipeline_out).await?;
    let pdf_requests = sim.count("/pdf/*");
    sim.clear_requests();
    let curl = match run_curl(&args, &sim, &curl_out, &tmp.path().join("curl.cfg")).await {
        Ok(row) => Some(row),
        Err(reason) => {
            println!("curl row skipped: {reason}");
            None
        }
    };
    println!("pipeline PDF requests: {pdf_requests}");
    println!();
    let mut rows = vec![pipeline];
    rows.extend(curl);
    let curl_row = rows.iter().find(|r| r.tool.starts_with("curl"));
    print_table(&rows, curl_row);
    if std::env::var_os("BULK_BENCH_KEEP").is_some() {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}
