//! The crawl frontier's benchmark: how fast a fast host's works go while a slow host's
//! works wait their turn. Two loopback simulators: host A limited by the client to
//! 1 req/s, host B unlimited; the real runner (`runner::exec::run`: ledger, manifest,
//! every layer) runs B's works alone, then A's works followed by B's in one input, and
//! the table compares B's speed (works per second until B's last request).
//!
//! ```sh
//! cargo run --release --example frontier_bench --features simulator
//! cargo run --release --example frontier_bench --features simulator -- --a-works 50 --b-works 2000 --workers 16
//! ```
//!
//! Defaults: 50 works on A, 2,000 on B, 16 workers, PDFs of 20 KiB answered after 20 ms.
//! A's works come first in the input, the worst case for a runner that lets a waiting
//! work hold its worker. A's works beyond the limiter's maximum wait (30 s at 1 req/s)
//! are deferred to the second pass, so the mixed run lasts about as long as A needs.
//!
//! Measured (2026-11-27, debug build, 2 CPUs shared with other jobs, defaults): B alone
//! 2,000 works in 5.95 s (336/s); A then B, B done after 5.70 s (351/s), **1.04×** its
//! speed alone, A's 50 requests 1 s apart until 49 s. Before the crawl frontier (a work
//! waiting for A's token held its worker): B's first request after 15 s, B done after
//! 45.3 s (44/s), **0.13×**.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use contentdownload::resolvers::RESOLVER_NAMES;
use contentdownload::runner::exec::{self, Exit};
use contentdownload::runner::{Cli, Command, RunSettings};
use contentdownload::simulator::{Reply, Simulator};

mod bench_support;

/// The first work id of each host.
const A_FIRST: usize = 1_000_000;
const B_FIRST: usize = 2_000_000;

struct Args {
    a_works: usize,
    b_works: usize,
    workers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        a_works: 50,
        b_works: 2000,
        workers: 16,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .parse::<usize>()
            .map_err(|_| format!("{flag} takes a whole number, got {value:?}"))?;
        match flag.as_str() {
            "--a-works" => args.a_works = number,
            "--b-works" => args.b_works = number,
            "--workers" => args.workers = number,
            other => {
                return Err(format!(
                    "unknown argument {other:?}: use --a-works N --b-works N --workers N"
                ))
            }
        }
    }
    if args.b_works == 0 || args.workers == 0 {
        return Err("--b-works and --workers must be at least 1".into());
    }
    Ok(args)
}

/// Works whose PDFs are on `sim`; each host's works are numbered from its `first` id.
fn write_works(path: &Path, hosts: &[(&Simulator, usize, usize)]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for (sim, first, n) in hosts {
        for i in *first..first + n {
            let record = serde_json::json!({
                "id": format!("https://openalex.org/W{i}"),
                "title": format!("Benchmark work {i}"),
                "best_oa_location": {"pdf_url": sim.url(&format!("/pdf/W{i}.pdf"))},
                "open_access": {"is_oa": true},
            });
            writeln!(out, "{record}")?;
        }
    }
    out.flush()
}

/// One run of the runner over `works`; the time it took.
async fn run(args: &Args, works: &Path, out: &Path, a: &Simulator, b: &Simulator) -> Result<Duration, String> {
    let mut argv: Vec<String> = [
        "contentdownload",
        "run",
        "--input",
        &works.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--workers",
        &args.workers.to_string(),
        "--rate",
        &format!("{}=1:1", a.addr()),
        "--rate",
        &format!("{}=1000000:1000", b.addr()),
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for name in RESOLVER_NAMES {
        argv.push("--resolver-base".into());
        argv.push(format!("{name}={}", b.url(&format!("/{name}"))));
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let Command::Run(run_args) = cli.command else {
        return Err("the runner did not parse a `run` command".into());
    };
    let settings = RunSettings::resolve(&run_args, exec::generated_run_id)?;
    let started = Instant::now();
    let exit = exec::run(settings, std::future::pending())
        .await
        .map_err(|e| format!("the runner failed ({:?}): {e}", e.exit()))?;
    if exit != Exit::Completed {
        return Err(format!("the runner ended with {exit:?}"));
    }
    Ok(started.elapsed())
}

/// Seconds from `started` to the last PDF request `sim` saw, and how many it saw.
fn last_request(sim: &Simulator, started: tokio::time::Instant) -> (f64, usize) {
    let seen = sim.requests_to("/pdf/*");
    let last = seen
        .iter()
        .map(|r| r.at.saturating_duration_since(started))
        .max()
        .unwrap_or_default();
    (last.as_secs_f64(), seen.len())
}

async fn bench(args: Args) -> Result<(), String> {
    let a = Simulator::start().await.map_err(|e| format!("simulator: {e}"))?;
    let b = Simulator::start().await.map_err(|e| format!("simulator: {e}"))?;
    for sim in [&a, &b] {
        sim.on("/pdf/*", [Reply::pdf(20 * 1024).delay(Duration::from_millis(20))]);
    }
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    println!(
        "frontier_bench: host A at 1 req/s with {} works, host B unlimited with {} works, --workers {}, {} CPU(s)",
        args.a_works,
        args.b_works,
        args.workers,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let alone_works = tmp.path().join("b.jsonl");
    write_works(&alone_works, &[(&b, B_FIRST, args.b_works)]).map_err(|e| e.to_string())?;
    let t0 = tokio::time::Instant::now();
    let alone_wall = run(&args, &alone_works, &tmp.path().join("alone"), &a, &b).await?;
    let (b_alone, b_alone_n) = last_request(&b, t0);
    b.clear_requests();

    let mixed_works = tmp.path().join("ab.jsonl");
    write_works(
        &mixed_works,
        &[(&a, A_FIRST, args.a_works), (&b, B_FIRST, args.b_works)],
    )
    .map_err(|e| e.to_string())?;
    let t0 = tokio::time::Instant::now();
    let mixed_wall = run(&args, &mixed_works, &tmp.path().join("mixed"), &a, &b).await?;
    let (b_mixed, b_mixed_n) = last_request(&b, t0);
    let (a_last, a_n) = last_request(&a, t0);

    let per_second = |sim: &Simulator| {
        let mut counts = vec![0usize; 1 + mixed_wall.as_secs() as usize];
        for r in sim.requests_to("/pdf/*") {
            let s = r.at.saturating_duration_since(t0).as_secs() as usize;
            if let Some(c) = counts.get_mut(s) {
                *c += 1;
            }
        }
        counts
    };
    println!("second by second (A then B):");
    for (s, (a, b)) in per_second(&a).into_iter().zip(per_second(&b)).enumerate() {
        if a + b > 0 {
            println!("  {s:>3} s: A {a:>3}  B {b:>5}");
        }
    }
    let speed = |n: usize, s: f64| n as f64 / s.max(1e-9);
    println!();
    println!("| run | B requests | B done after s | B works/s | A requests | A done after s | run wall s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| B alone | {b_alone_n} | {b_alone:.2} | {:.0} | - | - | {:.2} |",
        speed(b_alone_n, b_alone),
        alone_wall.as_secs_f64()
    );
    println!(
        "| A then B | {b_mixed_n} | {b_mixed:.2} | {:.0} | {a_n} | {a_last:.2} | {:.2} |",
        speed(b_mixed_n, b_mixed),
        mixed_wall.as_secs_f64()
    );
    println!();
    println!(
        "B's speed with A / alone: {:.2} (goal ≥ 0.8)",
        speed(b_mixed_n, b_mixed) / speed(b_alone_n, b_alone)
    );
    Ok(())
}

fn main() -> ExitCode {
    bench_support::main("frontier_bench", parse_args, bench)
}
