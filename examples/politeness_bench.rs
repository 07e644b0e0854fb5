//! The politeness benchmark: the real runner (`runner::exec::run`, the full stack of
//! layers, provider learning on) against rate limiters no one on the team wrote, started
//! on loopback by this program:
//!
//! - **nginx `limit_req`** (a leaky bucket, `burst=5 nodelay`) answering
//!   `429` + `Retry-After: 1`, serving the PDFs itself;
//! - **HAProxy** (a stick-table `http_req_rate(1s)` limit) answering
//!   `http-request return status 429 hdr Retry-After 1`, in front of an unlimited nginx
//!   serving the PDFs.
//!
//! The client is told 5× the hidden rate (`--rate 127.0.0.1:<port>=<5 × rate>`), with 16
//! workers. Two runs per limiter: a steady one (`--secs`), and one where the hidden rate
//! triples after `--triple-at` seconds (nginx: `SIGHUP` reload with the new config;
//! HAProxy: a soft reload, `-sf`). Each second prints the requests that reached the
//! server, the 429s and the goodput (200s), read from the run's `attempts.csv`; then a
//! table: goodput / hidden rate and the share of 429s after the first 5 s, and for the
//! tripled run the seconds until a 3-second average goodput reaches 0.9× the new rate.
//!
//! ```sh
//! cargo run --release --example politeness_bench
//! cargo run --release --example politeness_bench -- --limiter nginx --rate 20 --secs 60 --triple-at 30 --triple-secs 60
//! ```
//!
//! `--fixed R` runs one steady run per limiter with learning off and the client told
//! exactly `R`/s (burst 1): what a client that already knew the limit would get.
//!
//! Measured (2026-11-28, release build, 2 CPUs, `--rate 20 --secs 60`), goodput / hidden
//! rate and 429s after the first 5 s. Learning: nginx 0.958 (four runs), 0.3%; HAProxy
//! 0.901–0.908 (seven steady runs), 0.4%; tripled at 20 s, 0.9× the new rate after 17 s (nginx)
//! and 8 s (HAProxy). Fixed rate against HAProxy: 19/s 0.950, 19.5/s 0.975, 20/s 1.000
//! (twice), all without a 429; 20.5/s 0.681 with 2.4% 429s. So a client can sit right at
//! HAProxy's limit once it knows it, and falls off a cliff just above it. What the learning
//! runs lose against HAProxy is the seconds of `Retry-After` pauses: each probe above
//! the plateau meets the limit and costs a whole second (HAProxy counts its refusals and has
//! no burst, so the second cannot be made up), and finding a tripled limit within 30 s
//! needs a probe at least every ~21 s, so two of those seconds fall into the 55 scored.
//!
//! Needs `nginx` (and `haproxy` for that limiter) on the PATH or in /usr/sbin
//! (`apt-get install nginx haproxy`). Every server is stopped when the benchmark ends, on
//! error too (SIGTERM on drop, then SIGKILL). Only 127.0.0.1 ports are used.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use contentdownload::resolvers::RESOLVER_NAMES;
use contentdownload::runner::exec::{self, Exit};
use contentdownload::runner::{Cli, Command as RunnerCommand, RunSettings};

mod bench_support;

use bench_support::servers::{self, find_program, free_port, Server};

const PDF_BYTES: usize = 4096;
const WORKERS: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Limiter {
    Nginx,
    Haproxy,
}

impl Limiter {
    fn name(self) -> &'static str {
        match self {
            Limiter::Nginx => "nginx limit_req",
            Limiter::Haproxy => "haproxy http_req_rate",
        }
    }
}

struct Args {
    limiters: Vec<Limiter>,
    rate: u32,
    secs: u64,
    triple_at: u64,
    triple_secs: u64,
    /// `--fixed R`: learning off, the client told exactly `R`/s with a burst of one — what a
    /// client that already knew the limit would get (no probe ever meets it)
    fixed: Option<f64>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        limiters: vec![Limiter::Nginx, Limiter::Haproxy],
        rate: 20,
        secs: 20,
        triple_at: 10,
        triple_secs: 40,
        fixed: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} takes a whole number, got {value:?}"))
        };
        match flag.as_str() {
            "--limiter" => {
                args.limiters = match value.as_str() {
                    "nginx" => vec![Limiter::Nginx],
                    "haproxy" => vec![Limiter::Haproxy],
                    "both" => vec![Limiter::Nginx, Limiter::Haproxy],
                    other => return Err(format!("--limiter is nginx, haproxy or both, got {other:?}")),
                }
            }
            "--rate" => args.rate = u32::try_from(number()?).map_err(|_| "--rate is too large".to_owned())?,
            "--secs" => args.secs = number()?,
            "--triple-at" => args.triple_at = number()?,
            "--triple-secs" => args.triple_secs = number()?,
            "--fixed" => {
                let r = value
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| format!("--fixed takes a positive rate, got {value:?}"))?;
                args.fixed = Some(r);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?}: use --limiter nginx|haproxy|both --rate R --secs S --triple-at T --triple-secs S [--fixed R]"
                ))
            }
        }
    }
    if args.rate == 0 || args.rate > 2000 {
        return Err("--rate must be between 1 and 2000 requests per second".into());
    }
    if args.secs < 6 {
        return Err("--secs must be at least 6 (the first 5 s are not scored)".into());
    }
    if args.triple_secs != 0 && args.triple_at + 1 >= args.triple_secs {
        return Err("--triple-at must be before the end of the run (--triple-secs; 0 skips that run)".into());
    }
    Ok(args)
}

/// nginx serving `www`; with `limit = Some(rate)`, behind `limit_req`.
fn nginx_config(dir: &Path, port: u16, limit: Option<u32>) -> String {
    let (zone, location) = match limit {
        Some(rate) => (
            format!("limit_req_zone $binary_remote_addr zone=bench:1m rate={rate}r/s;\n    limit_req_status 429;"),
            "limit_req zone=bench burst=5 nodelay;\n            error_page 429 = @throttled;",
        ),
        None => (String::new(), ""),
    };
    let server = format!(
        r#"listen 127.0.0.1:{port};
        root {}/www;
        location / {{
            {location}
        }}
        location @throttled {{
            add_header Retry-After 1 always;
            return 429;
        }}"#,
        dir.display()
    );
    servers::nginx_config(
        dir,
        port,
        1,
        &format!("keepalive_requests 100000;\n    {zone}"),
        &server,
    )
}

fn haproxy_config(port: u16, backend: u16, limit: u32) -> String {
    format!(
        r#"global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:{port}
    stick-table type ip size 1k expire 30s store http_req_rate(1s)
    http-request track-sc0 src
    http-request return status 429 hdr Retry-After 1 if {{ sc_http_req_rate(0) gt {limit} }}
    default_backend pdfs
backend pdfs
    server nginx 127.0.0.1:{backend}
"#
    )
}

/// The servers of one run: the limiter, and for HAProxy the nginx behind it.
struct Servers {
    limiter: Limiter,
    dir: PathBuf,
    port: u16,
    backend_port: u16,
    front: Server,
    _backend: Option<Server>,
    config: PathBuf,
}

impl Servers {
    fn start(limiter: Limiter, dir: &Path, rate: u32) -> Result<Servers, String> {
        let nginx = find_program("nginx")?;
        let port = free_port()?;
        match limiter {
            Limiter::Nginx => {
                let config = dir.join(format!("nginx-{port}.conf"));
                std::fs::write(&config, nginx_config(dir, port, Some(rate))).map_err(|e| e.to_string())?;
                let mut front = Server::start("nginx", Command::new(&nginx).arg("-c").arg(&config))?;
                front.wait_listening(port)?;
                Ok(Servers {
                    limiter,
                    dir: dir.to_owned(),
                    port,
                    backend_port: port,
                    front,
                    _backend: None,
                    config,
                })
            }
            Limiter::Haproxy => {
                let haproxy = find_program("haproxy")?;
                let backend_port = free_port()?;
                let backend_config = dir.join(format!("nginx-{backend_port}.conf"));
                std::fs::write(&backend_config, nginx_config(dir, backend_port, None)).map_err(|e| e.to_string())?;
                let mut backend =
                    Server::start("nginx (backend)", Command::new(&nginx).arg("-c").arg(&backend_config))?;
                backend.wait_listening(backend_port)?;
                let config = dir.join(format!("haproxy-{port}.cfg"));
                std::fs::write(&config, haproxy_config(port, backend_port, rate)).map_err(|e| e.to_string())?;
                let mut front = Server::start("haproxy", Command::new(&haproxy).arg("-db").arg("-f").arg(&config))?;
                front.wait_listening(port)?;
                Ok(Servers {
                    limiter,
                    dir: dir.to_owned(),
                    port,
                    backend_port,
                    front,
                    _backend: Some(backend),
                    config,
                })
            }
        }
    }

    /// Changes the hidden rate while the run goes on.
    fn set_rate(&mut self, rate: u32) -> Result<(), String> {
        match self.limiter {
            Limiter::Nginx => {
                std::fs::write(&self.config, nginx_config(&self.dir, self.port, Some(rate)))
                    .map_err(|e| e.to_string())?;
                let status = Command::new("kill")
                    .arg("-HUP")
                    .arg(self.front.pid().to_string())
                    .status()
                    .map_err(|e| format!("kill -HUP: {e}"))?;
                if !status.success() {
                    return Err(format!("kill -HUP nginx: {status}"));
                }
                Ok(())
            }
            Limiter::Haproxy => {
                // a soft reload: the new process takes the port, the old one finishes its
                // connections and leaves
                std::fs::write(&self.config, haproxy_config(self.port, self.backend_port, rate))
                    .map_err(|e| e.to_string())?;
                let haproxy = find_program("haproxy")?;
                let old = self.front.pid();
                let next = Server::start(
                    "haproxy",
                    Command::new(&haproxy)
                        .arg("-db")
                        .arg("-f")
                        .arg(&self.config)
                        .arg("-sf")
                        .arg(old.to_string()),
                )?;
                // the old one is reaped when its handle drops
                let _old = std::mem::replace(&mut self.front, next);
                std::thread::sleep(Duration::from_millis(200));
                self.front.check_alive()
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn write_works(path: &Path, port: u16, n: usize) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        let id = format!("W{}", 1_000_000 + i);
        let record = serde_json::json!({
            "id": format!("https://openalex.org/{id}"),
            "title": format!("Politeness work {i}"),
            "best_oa_location": {"pdf_url": format!("http://127.0.0.1:{port}/pdf/{id}.pdf")},
            "open_access": {"is_oa": true},
        });
        writeln!(out, "{record}")?;
    }
    out.flush()
}

fn write_pdfs(www: &Path, n: usize) -> std::io::Result<()> {
    let dir = www.join("pdf");
    std::fs::create_dir_all(&dir)?;
    let mut body = b"%PDF-1.7\n".to_vec();
    body.resize(PDF_BYTES - 6, b' ');
    body.extend_from_slice(b"\n%%EOF");
    for i in 0..n {
        std::fs::write(dir.join(format!("W{}.pdf", 1_000_000 + i)), &body)?;
    }
    Ok(())
}

/// Per second since `start_ms`: (PDF requests that reached the server, 429s, 200s).
fn per_second(csv_path: &Path, start_ms: u64, secs: u64) -> Result<Vec<(u64, u64, u64)>, String> {
    let mut rows = vec![(0u64, 0u64, 0u64); secs as usize + 1];
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv_path)
        .map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("attempts.csv has no {name} column"))
    };
    let (ts, status, url) = (col("timestamp_ms")?, col("status")?, col("url")?);
    for record in reader.records() {
        let record = record.map_err(|e| e.to_string())?;
        // only the PDFs: a throttled work may also ask a resolver, which is not scored
        if !record.get(url).is_some_and(|u| u.contains("/pdf/")) {
            continue;
        }
        let Some(at) = record.get(ts).and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        let Some(code) = record.get(status).and_then(|v| v.parse::<u16>().ok()) else {
            continue; // never reached the server (a cool-down, a local error)
        };
        let second = at.saturating_sub(start_ms) / 1000;
        if let Some(row) = rows.get_mut(second as usize) {
            row.0 += 1;
            if code == 429 {
                row.1 += 1;
            }
            if code == 200 {
                row.2 += 1;
            }
        }
    }
    rows.truncate(secs as usize);
    Ok(rows)
}

/// The timestamp of the first attempt in `attempts.csv`, if any.
fn first_attempt_ms(csv_path: &Path) -> Result<Option<u64>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(csv_path)
        .map_err(|e| format!("{}: {e}", csv_path.display()))?;
    let headers = reader.headers().map_err(|e| e.to_string())?.clone();
    let Some(ts) = headers.iter().position(|h| h == "timestamp_ms") else {
        return Err("attempts.csv has no timestamp_ms column".into());
    };
    Ok(reader
        .records()
        .filter_map(|r| r.ok()?.get(ts)?.parse::<u64>().ok())
        .min())
}

struct Outcome {
    limiter: Limiter,
    label: String,
    hidden: f64,
    goodput_ratio: f64,
    throttled: f64,
    recovery: Option<Option<u64>>,
}

async fn run_once(
    limiter: Limiter,
    rate: u32,
    secs: u64,
    triple_at: Option<u64>,
    fixed: Option<f64>,
    tmp: &Path,
) -> Result<Outcome, String> {
    let dir = tmp.join(format!(
        "{}-{}",
        if limiter == Limiter::Nginx { "nginx" } else { "haproxy" },
        if triple_at.is_some() { "triple" } else { "steady" }
    ));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let peak = if triple_at.is_some() { rate * 3 } else { rate };
    // enough works that the run never runs dry: twice what the fastest allowed rate lets through
    let works_n = (peak as u64 * secs * 2 + 100) as usize;
    write_pdfs(&dir.join("www"), works_n).map_err(|e| format!("writing PDFs: {e}"))?;
    let mut servers = Servers::start(limiter, &dir, rate)?;
    let works = dir.join("works.jsonl");
    write_works(&works, servers.port, works_n).map_err(|e| e.to_string())?;
    let out = dir.join("out");

    let mut argv: Vec<String> = [
        "contentdownload",
        "run",
        "--input",
        &works.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--workers",
        &WORKERS.to_string(),
        "--rate",
        &match fixed {
            Some(r) => format!("127.0.0.1:{}={r}:1", servers.port),
            None => format!("127.0.0.1:{}={}", servers.port, rate * 5),
        },
        "--quiet",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if fixed.is_some() {
        argv.push("--disable-provider-learning".into());
    }
    for name in RESOLVER_NAMES {
        argv.push("--resolver-base".into());
        argv.push(format!("{name}=http://127.0.0.1:{}/{name}", servers.backend_port));
    }
    let cli = Cli::try_parse_from(&argv).map_err(|e| e.to_string())?;
    let RunnerCommand::Run(run_args) = cli.command else {
        return Err("the runner did not parse a `run` command".into());
    };
    let settings = RunSettings::resolve(&run_args, exec::generated_run_id)?;

    let label = match (triple_at, fixed) {
        (Some(t), _) => format!("{rate}/s, tripled at {t}s"),
        (None, Some(r)) => format!("{rate}/s steady, fixed {r}/s"),
        (None, None) => format!("{rate}/s steady"),
    };
    let told = match fixed {
        Some(r) => format!("{r}/s (burst 1, learning off)"),
        None => format!("{}/s", rate * 5),
    };
    println!(
        "\n## {} — {label}, client told {told}, {WORKERS} workers, {secs} s",
        limiter.name()
    );
    let start_ms = now_ms();
    let (tripled_tx, tripled_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        if let Some(t) = triple_at {
            tokio::time::sleep(Duration::from_secs(t)).await;
            let _ = tripled_tx.send(());
            tokio::time::sleep(Duration::from_secs(secs - t)).await;
        } else {
            tokio::time::sleep(Duration::from_secs(secs)).await;
        }
    };
    let runner = exec::run(settings, shutdown);
    tokio::pin!(runner);
    let mut tripled_rx = Some(tripled_rx);
    let exit = loop {
        tokio::select! {
            exit = &mut runner => break exit,
            Ok(()) = async { match tripled_rx.as_mut() { Some(rx) => rx.await, None => std::future::pending().await } } => {
                tripled_rx = None;
                servers.set_rate(rate * 3)?;
                println!("(hidden rate now {}/s)", rate * 3);
            }
        }
    };
    match exit {
        Ok(Exit::Fatal) | Ok(Exit::Usage) => return Err(format!("the runner ended with {exit:?}")),
        Err(e) => return Err(format!("the runner failed ({:?}): {e}", e.exit())),
        Ok(_) => {}
    }
    servers.front.check_alive()?;

    // seconds count from the runner's first attempt (its start-up is not scored)
    let first = first_attempt_ms(&out.join("attempts.csv"))?.unwrap_or(start_ms);
    let rows = per_second(&out.join("attempts.csv"), first, secs)?;
    println!("| s | hidden/s | sent/s | 429/s | goodput/s |");
    println!("| ---: | ---: | ---: | ---: | ---: |");
    let hidden_at = |s: u64| match triple_at {
        Some(t) if s >= t => rate * 3,
        _ => rate,
    };
    for (s, (sent, t429, ok)) in rows.iter().enumerate() {
        println!("| {s} | {} | {sent} | {t429} | {ok} |", hidden_at(s as u64));
    }
    if let Ok(text) = std::fs::read_to_string(out.join("provider_learning.json")) {
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) {
            for p in json["partitions"].as_array().into_iter().flatten() {
                println!(
                    "learned at the end: {}/{} rate {:.2}/s, remembered ceiling {}, confirmations {}",
                    p["provider"].as_str().unwrap_or("?"),
                    p["host"].as_str().unwrap_or("?"),
                    p["rate"].as_f64().unwrap_or(f64::NAN),
                    p["ceiling_seen"],
                    p["ceiling_confirmations"]
                );
            }
        }
    }

    // score the steady part: after the first 5 s, and before the change in a tripled run
    // (the last second of a run is its shutdown, not scored either)
    let scored_end = triple_at.unwrap_or(secs.saturating_sub(1)) as usize;
    let scored = &rows[5.min(scored_end)..scored_end];
    let (sent, t429, ok) = scored.iter().fold((0, 0, 0), |a, r| (a.0 + r.0, a.1 + r.1, a.2 + r.2));
    let seconds = scored.len().max(1) as f64;
    let goodput_ratio = ok as f64 / seconds / rate as f64;
    let throttled = if sent == 0 { 0.0 } else { t429 as f64 / sent as f64 };
    let recovery = triple_at.map(|t| {
        let target = 0.9 * (rate * 3) as f64;
        (t as usize..rows.len().saturating_sub(2))
            .find(|&s| (rows[s].2 + rows[s + 1].2 + rows[s + 2].2) as f64 / 3.0 >= target)
            .map(|s| s as u64 - t)
    });
    Ok(Outcome {
        limiter,
        label,
        hidden: rate as f64,
        goodput_ratio,
        throttled,
        recovery,
    })
}

fn main() -> ExitCode {
    bench_support::main("politeness_bench", parse_args, bench)
}

async fn bench(args: Args) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| format!("temporary folder: {e}"))?;
    let mut outcomes = Vec::new();
    for &limiter in &args.limiters {
        outcomes.push(run_once(limiter, args.rate, args.secs, None, args.fixed, tmp.path()).await?);
        if args.triple_secs > 0 && args.fixed.is_none() {
            outcomes.push(
                run_once(
                    limiter,
                    args.rate,
                    args.triple_secs,
                    Some(args.triple_at),
                    None,
                    tmp.path(),
                )
                .await?,
            );
        }
    }
    println!(
        "\n| limiter | run | hidden/s | goodput / hidden (after 5 s) | 429s (after 5 s) | to 0.9× the tripled rate |"
    );
    println!("| --- | --- | ---: | ---: | ---: | ---: |");
    for o in &outcomes {
        let recovery = match o.recovery {
            None => "n/a".to_owned(),
            Some(None) => "not reached".to_owned(),
            Some(Some(s)) => format!("{s} s"),
        };
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.1}% | {} |",
            o.limiter.name(),
            o.label,
            o.hidden,
            o.goodput_ratio,
            o.throttled * 100.0,
            recovery
        );
    }
    if std::env::var_os("POLITENESS_BENCH_KEEP").is_some() {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}
