//! Streams a large PDF from the loopback simulator to disk through the shared client and
//! the validated downloader, then prints the throughput and the process's peak RSS.
//!
//! ```sh
//! cargo run --release --example stream_1gib --features simulator            # 1 GiB
//! cargo run --release --example stream_1gib --features simulator -- 64      # 64 MiB
//! ```

use std::time::Instant;

use contentdownload::download::{download_pdf, DownloadOptions};
use contentdownload::service::{HttpClient, HttpConfig};
use contentdownload::simulator::{Reply, Simulator};

/// Peak resident set size of this process, from /proc (Linux); `None` elsewhere.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = std::env::args().nth(1).map(|a| a.parse()).transpose()?.unwrap_or(1024);
    let len = mib * 1024 * 1024;
    let sim = Simulator::start().await?;
    sim.on("/big.pdf", [Reply::pdf(len)]);
    let out = tempfile::tempdir()?;
    let client = HttpClient::new(&HttpConfig::default())?;
    let request = http::Request::get(sim.url("/big.pdf")).body(Default::default())?;

    let before = peak_rss_kib();
    let started = Instant::now();
    let done = download_pdf(client, request, out.path(), "W1", &DownloadOptions::default()).await?;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(done.bytes, len);
    assert_eq!(std::fs::metadata(&done.path)?.len(), len);
    println!(
        "streamed {mib} MiB to disk in {secs:.2} s ({:.0} MiB/s), sha256 {}",
        mib as f64 / secs,
        &done.sha256[..16]
    );
    match (before, peak_rss_kib()) {
        (Some(b), Some(a)) => println!(
            "peak RSS: {:.1} MiB before, {:.1} MiB after",
            b as f64 / 1024.0,
            a as f64 / 1024.0
        ),
        _ => println!("peak RSS: not available on this platform"),
    }
    Ok(())
}
