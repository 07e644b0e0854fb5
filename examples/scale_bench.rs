//! The scale benchmark of issue 16: N OpenAlex-shaped works in gzipped parts laid out like
//! the OpenAlex snapshot (`works/updated_date=YYYY-MM-DD/part_NNN.gz` and a `manifest`),
//! run through the runner binary against a real nginx on loopback, then `status` on the
//! ledger it filled and a rerun that has nothing left to do.
//!
//! ```sh
//! cargo build --release            # the runner binary the bench starts
//! cargo run --release --example scale_bench -- --works 1000000
//! cargo build --release --features postgres   # for --postgres: the runner with PostgreSQL
//! cargo run --release --example scale_bench -- --works 1000000 \
//!     --postgres postgres://postgres@127.0.0.1:5432/scale   # an empty database
//! ```
//!
//! A share of the works (`--oa-fraction`, default 0.02) is open access with a PDF of
//! `--pdf-size` bytes on the nginx; the others are closed (`open_access.is_oa: false`, no
//! location), as most of the snapshot is, so they cost the runner a ledger row and no
//! request. The runner runs with the `direct=openalex` tier only (no resolver API is asked:
//! the point is the runner's own cost at scale) and a rate far above what loopback can do.
//!
//! `--only-oa` passes the runner's flag: closed works are then left out before the ledger
//! (as a user harvesting the snapshot would run it); without it they are planned, found to
//! have no candidate and recorded as failed (`no_candidates`); a rerun within
//! `--resolver-cache-ttl` skips them from the ledger as it skips the downloaded ones.
//!
//! Reported, per ledger: the first run's works/s (reading, planning into the ledger,
//! downloading) and downloads/s, its peak RSS (GNU time's largest process), `status` wall
//! time on the full ledger, and the rerun's wall time and peak RSS. Needs `/usr/bin/time` and nginx
//! (`apt-get install time nginx`) and about 1.2 KB of disk a work for the parts.
//! `SCALE_BENCH_KEEP=1` keeps the temporary folder.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

mod bench_support;

use bench_support::servers::Nginx;

struct Args {
    works: usize,
    parts: usize,
    oa_fraction: f64,
    pdf_size: usize,
    workers: usize,
    postgres: Option<String>,
    bin: Option<PathBuf>,
    only_oa: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        works: 1_000_000,
        parts: 100,
        oa_fraction: 0.02,
        pdf_size: 2048,
        workers: 16,
        postgres: None,
        bin: None,
        only_oa: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let num = |v: String| v.replace('_', "").parse::<usize>().map_err(|e| format!("{v}: {e}"));
        match flag.as_str() {
            "--works" => args.works = num(value()?)?,
            "--parts" => args.parts = num(value()?)?.max(1),
            "--oa-fraction" => args.oa_fraction = value()?.parse().map_err(|e| format!("--oa-fraction: {e}"))?,
            "--pdf-size" => args.pdf_size = num(value()?)?,
            "--workers" => args.workers = num(value()?)?,
            "--postgres" => args.postgres = Some(value()?),
            "--bin" => args.bin = Some(PathBuf::from(value()?)),
            "--only-oa" => args.only_oa = true,
            "-h" | "--help" => {
                return Err(
                    "usage: scale_bench [--works N] [--parts N] [--oa-fraction F] [--pdf-size BYTES] \
                     [--workers N] [--postgres URL] [--bin PATH] [--only-oa]"
                        .into(),
                )
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    bench_support::main("scale_bench", parse, bench)
}

/// A closed or open work, shaped like the snapshot's records (ids, authorships, locations,
/// counts), about 1 KB of JSON.
fn record(n: usize, open: bool, port: u16) -> String {
    let doi = format!("https://doi.org/10.9999/scale.{n}");
    let work_type = ["article", "preprint", "book-chapter", "dataset"][n % 4];
    let mut v = serde_json::json!({
        "id": format!("https://openalex.org/W{}", 100_000_000 + n),
        "doi": doi,
        "title": format!("A study of the scaling of harvesters, part {n}"),
        "display_name": format!("A study of the scaling of harvesters, part {n}"),
        "publication_year": 2000 + (n % 25) as i32,
        "publication_date": format!("{}-01-15", 2000 + n % 25),
        "type": work_type,
        "ids": {"openalex": format!("https://openalex.org/W{}", 100_000_000 + n), "doi": doi,
                "pmid": format!("https://pubmed.ncbi.nlm.nih.gov/{}", 30_000_000 + n)},
        "authorships": (0..3).map(|a| serde_json::json!({
            "author_position": if a == 0 { "first" } else { "middle" },
            "author": {"id": format!("https://openalex.org/A{}", 5_000_000 + n * 3 + a),
                       "display_name": format!("Author {a} of work {n}"), "orcid": null},
            "institutions": [{"id": "https://openalex.org/I136199984",
                              "display_name": "Some University", "country_code": "US", "type": "education"}],
        })).collect::<Vec<_>>(),
        "cited_by_count": n % 97,
        "open_access": {"is_oa": open, "oa_status": if open { "gold" } else { "closed" }, "oa_url": null},
        "best_oa_location": null,
        "primary_location": null,
        "locations": [],
        "updated_date": "2024-01-01T00:00:00",
    });
    if open {
        let pdf = format!("http://127.0.0.1:{port}/pdf/W{}.pdf", 100_000_000 + n);
        v["best_oa_location"] = serde_json::json!({"pdf_url": pdf, "landing_page_url": null, "is_oa": true});
        v["open_access"]["oa_url"] = serde_json::Value::String(pdf);
    }
    let mut line = v.to_string();
    line.push('\n');
    line
}

/// Writes the snapshot tree and the open works' PDFs; returns how many works are open.
fn generate(args: &Args, root: &Path, www: &Path, port: u16) -> Result<usize, String> {
    let io = |e: std::io::Error| e.to_string();
    let pdf_dir = www.join("pdf");
    std::fs::create_dir_all(&pdf_dir).map_err(io)?;
    let mut pdf = b"%PDF-1.7\n".to_vec();
    pdf.resize(args.pdf_size.max(1100), b' ');
    pdf.extend_from_slice(b"\n%%EOF\n");
    let dates = ["2023-11-30", "2024-01-01", "2024-02-15", "2024-03-01"];
    let per_part = args.works.div_ceil(args.parts);
    let every = if args.oa_fraction > 0.0 {
        (1.0 / args.oa_fraction).round().max(1.0) as usize
    } else {
        usize::MAX
    };
    let mut open = 0;
    for p in 0..args.parts {
        let date = dates[p * dates.len() / args.parts];
        let dir = root.join("works").join(format!("updated_date={date}"));
        std::fs::create_dir_all(&dir).map_err(io)?;
        let file = std::fs::File::create(dir.join(format!("part_{p:03}.gz"))).map_err(io)?;
        let mut gz = flate2::write::GzEncoder::new(std::io::BufWriter::new(file), flate2::Compression::fast());
        for n in p * per_part..((p + 1) * per_part).min(args.works) {
            let is_open = n % every == 0;
            if is_open {
                open += 1;
                std::fs::write(pdf_dir.join(format!("W{}.pdf", 100_000_000 + n)), &pdf).map_err(io)?;
            }
            gz.write_all(record(n, is_open, port).as_bytes()).map_err(io)?;
        }
        gz.finish().map_err(io)?.flush().map_err(io)?;
    }
    std::fs::write(root.join("works").join("manifest"), "{\"entries\": []}\n").map_err(io)?;
    Ok(open)
}

struct Timed {
    wall: Duration,
    peak_rss_kib: u64,
    stdout: String,
}

/// Runs the binary under GNU time; fails unless it exits with one of `ok_codes`.
async fn timed(bin: &Path, args: &[&str], ok_codes: &[i32]) -> Result<Timed, String> {
    let rss_file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let out = tokio::process::Command::new("/usr/bin/time")
        .arg("-o")
        .arg(rss_file.path())
        .arg("-f")
        .arg("%M")
        .arg(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| format!("cannot start /usr/bin/time (apt-get install time): {e}"))?;
    let wall = started.elapsed();
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !ok_codes.contains(&code) {
        return Err(format!(
            "{} {} exited {code}:\n{stdout}\n{}",
            bin.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let peak_rss_kib = std::fs::read_to_string(rss_file.path())
        .ok()
        .and_then(|t| t.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    Ok(Timed {
        wall,
        peak_rss_kib,
        stdout,
    })
}

/// The number on the runner's summary line that starts with `label`.
fn summary(stdout: &str, label: &str) -> u64 {
    stdout
        .lines()
        .find(|l| l.starts_with(label))
        .and_then(|l| l[label.len()..].trim().parse().ok())
        .unwrap_or(0)
}

async fn bench(args: Args) -> Result<(), String> {
    let bin = match &args.bin {
        Some(b) => b.clone(),
        None => {
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            let dir = exe.parent().and_then(Path::parent).ok_or("no target folder")?;
            dir.join("contentdownload")
        }
    };
    if !bin.is_file() {
        return Err(format!("no runner binary at {} (cargo build --release)", bin.display()));
    }
    let tmp = tempfile::Builder::new()
        .prefix("scale_bench")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let root = tmp.path();
    let www = root.join("www");
    std::fs::create_dir_all(&www).map_err(|e| e.to_string())?;
    let mut nginx = Nginx::start(root, &www, 1)?;

    let t = Instant::now();
    let open = tokio::task::block_in_place(|| generate(&args, root, &www, nginx.port))?;
    let parts_bytes: u64 = walk_size(&root.join("works"));
    println!(
        "generated {} works ({} open, {} PDFs of {} B) in {} gzipped parts, {:.1} MB, in {:.1} s",
        args.works,
        open,
        open,
        args.pdf_size,
        args.parts,
        parts_bytes as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let mut ledgers = vec![("sqlite", None)];
    if let Some(url) = &args.postgres {
        ledgers.push(("postgres", Some(url.clone())));
    }
    println!();
    println!("| ledger | first run | works/s | downloads/s | peak RSS | status | rerun | rerun peak RSS |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (name, url) in ledgers {
        let out = root.join(format!("out-{name}"));
        let input = root.join("works");
        let rate = format!("127.0.0.1:{}=100000:1000", nginx.port);
        let workers = args.workers.to_string();
        let mut run_args: Vec<String> = [
            "run",
            "--input",
            input.to_str().unwrap_or_default(),
            "--out",
            out.to_str().unwrap_or_default(),
            "--quiet",
            "--fallback-tier",
            "direct=openalex",
            "--rate",
            &rate,
            "--workers",
            &workers,
            "--max-per-host",
            &workers,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if args.only_oa {
            run_args.push("--only-oa".into());
        }
        let mut status_args = vec!["status".to_string(), "--out".into(), out.display().to_string()];
        if let Some(url) = &url {
            run_args.extend(["--ledger".into(), url.clone()]);
            status_args.extend(["--ledger".into(), url.clone()]);
        }
        let run_refs: Vec<&str> = run_args.iter().map(String::as_str).collect();
        let status_refs: Vec<&str> = status_args.iter().map(String::as_str).collect();
        // closed works end as no_candidates: a definite outcome, exit 0
        let first = timed(&bin, &run_refs, &[0, 3]).await?;
        nginx.server().check_alive()?;
        let downloaded = summary(&first.stdout, "downloaded");
        if downloaded as usize != open {
            return Err(format!(
                "{name}: {downloaded} downloaded of {open} open works:\n{}",
                first.stdout
            ));
        }
        let status = timed(&bin, &status_refs, &[0]).await?;
        let rerun = timed(&bin, &run_refs, &[0, 3]).await?;
        let skipped = summary(&rerun.stdout, "skipped");
        if skipped as usize != open {
            eprintln!(
                "{name}: the rerun skipped {skipped}, expected {open}:\n{}",
                rerun.stdout
            );
        }
        let secs = first.wall.as_secs_f64();
        println!(
            "| {name} | {:.1} s | {:.0} | {:.0} | {:.0} MiB | {:.2} s | {:.1} s | {:.0} MiB |",
            secs,
            args.works as f64 / secs,
            downloaded as f64 / secs,
            first.peak_rss_kib as f64 / 1024.0,
            status.wall.as_secs_f64(),
            rerun.wall.as_secs_f64(),
            rerun.peak_rss_kib as f64 / 1024.0
        );
    }
    if std::env::var_os("SCALE_BENCH_KEEP").is_some() {
        println!("kept {}", tmp.keep().display());
    }
    Ok(())
}

fn walk_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => walk_size(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}
