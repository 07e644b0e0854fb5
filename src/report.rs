//! `contentdownload report`: a self-contained `report.html` drawn from a run's manifest.
//!
//! The manifest (`manifest.jsonl`) holds one line per HTTP attempt and one per work, for
//! every run of the folder. [`Report::read`] streams it once, keeping only counters (per
//! second, per provider, per host, per reason), so a manifest of millions of lines is read
//! in bounded memory; [`Report::html`] renders the counters as one HTML page with inline SVG
//! charts (drawn by `plotters`, no JavaScript, nothing fetched from the network):
//!
//! - each provider's learned rate over time (the runner's `rate` lines), requests sent per
//!   second by provider (what that rate let through) and HTTP 429s per second by provider;
//! - PDFs downloaded per second;
//! - work outcomes by reason, by resolver and by host;
//! - the slowest hosts (mean and largest attempt time) and the most failing hosts.
//!
//! ```
//! use contentdownload::report::Report;
//!
//! let dir = tempfile::tempdir()?;
//! let manifest = dir.path().join("manifest.jsonl");
//! std::fs::write(&manifest, concat!(
//!     r#"{"schema_version":1,"run_id":"r1","record_type":"attempt","timestamp_ms":1700000000000,"#,
//!     r#""operation":"download","provider":"example.org","url":"https://example.org/a.pdf","#,
//!     r#""status":200,"elapsed_us":90000,"bytes":5000}"#, "\n",
//!     r#"{"schema_version":1,"run_id":"r1","record_type":"work","work_id":"W1","#,
//!     r#""outcome":"downloaded","resolver":"openalex","url":"https://example.org/a.pdf","elapsed_ms":95,"attempts":1}"#, "\n",
//! ))?;
//! let report = Report::read(&manifest, None)?;
//! assert_eq!(report.works(), 1);
//! let html = report.html();
//! assert!(html.contains("<svg") && html.contains("example.org"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::Path;

use plotters::prelude::*;
use serde::Deserialize;

/// The report's file name, written next to the manifest.
pub const REPORT_FILE: &str = "report.html";

/// The most points a time chart draws; longer runs are summed into wider buckets.
const MAX_POINTS: usize = 600;

/// The most rows a "by host" table or chart shows.
const TOP: usize = 15;

/// A manifest that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the manifest {path}: {source}")]
pub struct ReportError {
    path: String,
    source: std::io::Error,
}

/// One manifest line, attempt or work: only the fields the report reads.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Line {
    record_type: String,
    run_id: String,
    // attempt lines
    timestamp_ms: Option<u64>,
    operation: Option<String>,
    provider: Option<String>,
    status: Option<u16>,
    elapsed_us: Option<u64>,
    // both
    url: Option<String>,
    reason: Option<String>,
    // work lines
    outcome: Option<String>,
    resolver: Option<String>,
    // rate lines (and `provider`, `timestamp_ms`)
    host: Option<String>,
    rate: Option<f64>,
}

#[derive(Default, Clone, Copy)]
struct PerSecond {
    requests: u64,
    throttled: u64,
}

#[derive(Default)]
struct HostStats {
    attempts: u64,
    failures: u64,
    total_us: u64,
    max_us: u64,
}

/// What the report counts, read from a manifest.
#[derive(Default)]
pub struct Report {
    runs: Vec<String>,
    first_ms: Option<u64>,
    /// per provider, per second since `first_ms`
    providers: BTreeMap<String, BTreeMap<u64, PerSecond>>,
    /// per partition label, the learned rate read at a second since `first_ms` (the last
    /// reading of that second)
    rates: BTreeMap<String, BTreeMap<u64, f64>>,
    downloads: BTreeMap<u64, u64>,
    hosts: HashMap<String, HostStats>,
    by_reason: BTreeMap<String, u64>,
    by_resolver: BTreeMap<String, (u64, u64)>,
    by_host: HashMap<String, (u64, u64)>,
    works: u64,
    attempts: u64,
    unreadable: u64,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("runs", &self.runs)
            .field("works", &self.works)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Report {
    /// Reads `manifest`, keeping the lines of `run` (a run id) or, for `None`, of every run.
    /// Lines that are not JSON (a line cut by a crash) are counted and skipped.
    pub fn read(manifest: &Path, run: Option<&str>) -> Result<Report, ReportError> {
        let err = |source| ReportError {
            path: manifest.display().to_string(),
            source,
        };
        let file = std::fs::File::open(manifest).map_err(err)?;
        let mut report = Report::default();
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut buf = String::new();
        loop {
            buf.clear();
            match reader.read_line(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                // not UTF-8: one bad line, not the end
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    report.unreadable += 1;
                    continue;
                }
                Err(e) => return Err(err(e)),
            }
            if buf.trim().is_empty() {
                continue;
            }
            let Ok(line) = serde_json::from_str::<Line>(&buf) else {
                report.unreadable += 1;
                continue;
            };
            if run.is_some_and(|r| r != line.run_id) {
                continue;
            }
            if !report.runs.contains(&line.run_id) {
                report.runs.push(line.run_id.clone());
            }
            match line.record_type.as_str() {
                "attempt" => report.attempt(line),
                "work" => report.work(line),
                "rate" => report.rate(line),
                _ => {}
            }
        }
        Ok(report)
    }

    /// Work lines read (a work tried in two runs counts twice).
    pub fn works(&self) -> u64 {
        self.works
    }

    /// Attempt lines read.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }

    /// The second since the earliest line seen of a line stamped `ts`.
    fn second(&mut self, ts: u64) -> u64 {
        // manifests grow across runs, the seconds count from the earliest line seen so far
        let first = *self.first_ms.get_or_insert(ts);
        if ts < first {
            self.shift(first - ts);
        }
        (ts - self.first_ms.unwrap_or(ts)) / 1000
    }

    fn rate(&mut self, line: Line) {
        let (Some(ts), Some(rate)) = (line.timestamp_ms, line.rate) else {
            return;
        };
        if !rate.is_finite() {
            return;
        }
        let second = self.second(ts);
        let provider = line.provider.unwrap_or_else(|| "unknown".into());
        let label = match line.host {
            Some(host) if host != provider => format!("{provider} ({host})"),
            _ => provider,
        };
        self.rates.entry(label).or_default().insert(second, rate);
    }

    fn attempt(&mut self, line: Line) {
        self.attempts += 1;
        let Some(ts) = line.timestamp_ms else { return };
        let second = self.second(ts);
        let throttled = line.status == Some(429);
        let provider = line.provider.unwrap_or_else(|| "unknown".into());
        let slot = self.providers.entry(provider).or_default().entry(second).or_default();
        slot.requests += 1;
        slot.throttled += u64::from(throttled);
        let ok = line.status.is_some_and(|s| (200..300).contains(&s));
        if ok && line.operation.as_deref() == Some("download") {
            *self.downloads.entry(second).or_default() += 1;
        }
        let host = host_of(line.url.as_deref());
        let stats = self.hosts.entry(host).or_default();
        stats.attempts += 1;
        stats.failures += u64::from(!ok);
        let us = line.elapsed_us.unwrap_or(0);
        stats.total_us += us;
        stats.max_us = stats.max_us.max(us);
    }

    /// Moves every per-second count `by` seconds later (a line older than the first one read).
    fn shift(&mut self, by_ms: u64) {
        let by = by_ms.div_ceil(1000);
        self.first_ms = self.first_ms.map(|f| f - by * 1000);
        for seconds in self.providers.values_mut() {
            later(seconds, by);
        }
        for seconds in self.rates.values_mut() {
            later(seconds, by);
        }
        later(&mut self.downloads, by);
    }

    fn work(&mut self, line: Line) {
        self.works += 1;
        let downloaded = line.outcome.as_deref() == Some("downloaded");
        let key = match (&line.reason, &line.outcome) {
            (Some(r), _) => r.clone(),
            (None, Some(o)) => o.clone(),
            (None, None) => "unknown".into(),
        };
        *self.by_reason.entry(key).or_default() += 1;
        let resolver = self
            .by_resolver
            .entry(line.resolver.unwrap_or_else(|| "none".into()))
            .or_default();
        resolver.0 += 1;
        resolver.1 += u64::from(downloaded);
        if let Some(url) = line.url.as_deref() {
            let host = self.by_host.entry(host_of(Some(url))).or_default();
            host.0 += 1;
            host.1 += u64::from(downloaded);
        }
    }

    /// The report as one self-contained HTML page.
    pub fn html(&self) -> String {
        let mut page = String::new();
        let runs = if self.runs.len() == 1 {
            format!("run {}", escape(&self.runs[0]))
        } else {
            format!("{} runs", self.runs.len())
        };
        let _ = write!(
            page,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <title>contentdownload report</title>\n<style>\
             body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}\
             td:first-child,th:first-child{{text-align:left}}figure{{margin:1em 0}}</style></head><body>\n\
             <h1>contentdownload report</h1>\n<p>{runs}: {} works, {} attempts",
            self.works, self.attempts
        );
        if self.unreadable > 0 {
            let _ = write!(page, ", {} unreadable lines skipped", self.unreadable);
        }
        page.push_str("</p>\n");

        let seconds = self.last_second() + 1;
        page.push_str("<h2>Learned rate by provider</h2>\n");
        page.push_str(&self.rate_chart(seconds));
        page.push_str("<h2>Requests per second by provider</h2>\n");
        page.push_str("<p>What each provider's learned rate let through; 429s below.</p>\n");
        page.push_str(&self.time_chart("requests per second", seconds, |s| s.requests));
        page.push_str("<h2>HTTP 429 per second by provider</h2>\n");
        page.push_str(&self.time_chart("429s per second", seconds, |s| s.throttled));
        page.push_str("<h2>PDFs downloaded per second</h2>\n");
        let downloads = bucketed(&self.downloads, seconds, |n| *n);
        page.push_str(&line_chart(
            "downloads per second",
            &[("downloads".to_string(), downloads.1)],
            downloads.0,
        ));

        page.push_str("<h2>Outcomes by reason</h2>\n");
        let reasons: Vec<(String, u64)> = self.by_reason.iter().map(|(k, v)| (k.clone(), *v)).collect();
        page.push_str(&bar_chart("works", &reasons));
        page.push_str("<h2>Outcomes by resolver</h2>\n");
        let resolvers: Vec<(String, u64, u64)> = self.by_resolver.iter().map(|(k, v)| (k.clone(), v.0, v.1)).collect();
        page.push_str(&table(&["resolver", "works", "downloaded"], &resolvers));
        page.push_str("<h2>Outcomes by host</h2>\n");
        let mut hosts: Vec<(String, u64, u64)> = self.by_host.iter().map(|(k, v)| (k.clone(), v.0, v.1)).collect();
        hosts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        hosts.truncate(TOP);
        page.push_str(&table(&["host", "works", "downloaded"], &hosts));

        page.push_str("<h2>Slowest hosts</h2>\n");
        let mut slow: Vec<(&String, &HostStats)> = self.hosts.iter().filter(|(_, s)| s.attempts > 0).collect();
        slow.sort_by(|a, b| {
            let mean = |s: &HostStats| s.total_us / s.attempts;
            mean(b.1).cmp(&mean(a.1)).then(a.0.cmp(b.0))
        });
        page.push_str("<table><tr><th>host</th><th>attempts</th><th>mean ms</th><th>max ms</th></tr>\n");
        for (host, s) in slow.iter().take(TOP) {
            let _ = writeln!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{:.1}</td><td>{:.1}</td></tr>",
                escape(host),
                s.attempts,
                s.total_us as f64 / s.attempts as f64 / 1000.0,
                s.max_us as f64 / 1000.0
            );
        }
        page.push_str("</table>\n<h2>Most failing hosts</h2>\n");
        let mut failing: Vec<(String, u64, u64)> = self
            .hosts
            .iter()
            .filter(|(_, s)| s.failures > 0)
            .map(|(h, s)| (h.clone(), s.failures, s.attempts))
            .collect();
        failing.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        failing.truncate(TOP);
        page.push_str(&table(&["host", "failed attempts", "attempts"], &failing));
        page.push_str("</body></html>\n");
        page
    }

    fn last_second(&self) -> u64 {
        let last = |m: &BTreeMap<u64, PerSecond>| m.keys().next_back().copied().unwrap_or(0);
        self.providers
            .values()
            .map(last)
            .chain(self.rates.values().filter_map(|r| r.keys().next_back().copied()))
            .chain(self.downloads.keys().next_back().copied())
            .max()
            .unwrap_or(0)
    }

    fn time_chart(&self, y: &str, seconds: u64, pick: impl Fn(&PerSecond) -> u64) -> String {
        let mut width = 1;
        let series: Vec<(String, Vec<f64>)> = self
            .providers
            .iter()
            .map(|(provider, per)| {
                let (w, points) = bucketed(per, seconds, &pick);
                width = w;
                (provider.clone(), points)
            })
            .collect();
        line_chart(y, &series, width)
    }
}

impl Report {
    /// The partitions whose rate moved most often (at most one line per colour), each drawn
    /// from its first reading on as the rate last read.
    fn rate_chart(&self, seconds: u64) -> String {
        let mut moved: Vec<(&String, &BTreeMap<u64, f64>)> = self.rates.iter().collect();
        moved.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(b.0)));
        moved.truncate(PALETTE.len());
        moved.sort_by(|a, b| a.0.cmp(b.0));
        let width = seconds.div_ceil(MAX_POINTS as u64).max(1);
        let series: Vec<(String, Vec<f64>)> = moved
            .into_iter()
            .map(|(label, per)| (label.clone(), stepped(per, seconds, width)))
            .collect();
        line_chart("learned requests per second", &series, width)
    }
}

/// The rate last read by the end of each bucket of `width` seconds over `0..seconds`; NaN
/// (not drawn) before the first reading.
fn stepped(per: &BTreeMap<u64, f64>, seconds: u64, width: u64) -> Vec<f64> {
    let n = seconds.div_ceil(width).max(1);
    (0..n)
        .map(|i| {
            per.range(..(i + 1) * width)
                .next_back()
                .map_or(f64::NAN, |(_, rate)| *rate)
        })
        .collect()
}

fn later<T>(per: &mut BTreeMap<u64, T>, by: u64) {
    let old = std::mem::take(per);
    per.extend(old.into_iter().map(|(k, v)| (k + by, v)));
}

/// `per`'s values summed into at most [`MAX_POINTS`] buckets over `0..seconds`, as a rate
/// per second; returns the bucket width in seconds and the points.
fn bucketed<T>(per: &BTreeMap<u64, T>, seconds: u64, pick: impl Fn(&T) -> u64) -> (u64, Vec<f64>) {
    let width = seconds.div_ceil(MAX_POINTS as u64).max(1);
    let n = seconds.div_ceil(width).max(1) as usize;
    let mut points = vec![0.0; n];
    for (second, v) in per {
        if let Some(p) = points.get_mut((second / width) as usize) {
            *p += pick(v) as f64;
        }
    }
    for p in &mut points {
        *p /= width as f64;
    }
    (width, points)
}

/// The `host[:port]` of a URL as its partition key names it (lower-case, the port when
/// written), or `unknown`.
fn host_of(url: Option<&str>) -> String {
    url.and_then(|u| u.parse::<http::Uri>().ok())
        .map(|u| crate::context::host_of(&u))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Text for HTML (the manifest's strings came from servers and input files).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn table(head: &[&str], rows: &[(String, u64, u64)]) -> String {
    let mut t = String::from("<table><tr>");
    for h in head {
        let _ = write!(t, "<th>{}</th>", escape(h));
    }
    t.push_str("</tr>\n");
    for (name, a, b) in rows {
        let _ = writeln!(t, "<tr><td>{}</td><td>{a}</td><td>{b}</td></tr>", escape(name));
    }
    t.push_str("</table>\n");
    t
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One line per series over time; an empty chart says so in words.
fn line_chart(y: &str, series: &[(String, Vec<f64>)], width: u64) -> String {
    if series.iter().all(|(_, p)| p.iter().all(|v| *v == 0.0 || v.is_nan())) {
        return "<p><em>No data.</em></p>\n".into();
    }
    let len = series.iter().map(|(_, p)| p.len()).max().unwrap_or(1).max(2);
    let top = series.iter().flat_map(|(_, p)| p.iter().copied()).fold(0.0, f64::max) * 1.1;
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (960, 320)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = ((len - 1) as u64 * width) as f64;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..x_max.max(1.0), 0f64..top.max(1.0))?;
        chart.configure_mesh().x_desc("seconds").y_desc(y).draw()?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points
                        .iter()
                        .enumerate()
                        // NaN: no value yet (a rate not read before that time)
                        .filter(|(_, v)| !v.is_nan())
                        .map(|(x, v)| ((x as u64 * width) as f64, *v)),
                    color.stroke_width(2),
                ))?
                // plotters escapes the text it writes into the SVG
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => format!("<figure>{svg}</figure>\n"),
        Err(e) => format!("<p><em>chart not drawn: {}</em></p>\n", escape(&e.to_string())),
    }
}

/// Horizontal bars, largest first.
fn bar_chart(x: &str, rows: &[(String, u64)]) -> String {
    if rows.is_empty() {
        return "<p><em>No data.</em></p>\n".into();
    }
    let mut rows = rows.to_vec();
    rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    rows.truncate(TOP);
    // plotters escapes the text it writes into the SVG
    let names: Vec<String> = rows.iter().map(|(n, _)| n.clone()).collect();
    let top = rows.iter().map(|r| r.1).max().unwrap_or(1) as f64 * 1.15;
    let height = 60 + 28 * rows.len() as u32;
    let mut svg = String::new();
    let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
        let root = SVGBackend::with_string(&mut svg, (960, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(180)
            .build_cartesian_2d(0f64..top.max(1.0), (0..rows.len()).into_segmented())?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len())
            .y_label_formatter(&|y| match y {
                // the largest at the top: row i from the bottom is the (n - 1 - i)th
                SegmentValue::CenterOf(i) if *i < names.len() => names[names.len() - 1 - i].clone(),
                _ => String::new(),
            })
            .x_desc(x)
            .draw()?;
        let at = |i: usize| rows.len() - 1 - i;
        chart.draw_series(rows.iter().enumerate().map(|(i, (_, n))| {
            Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(at(i))),
                    (*n as f64, SegmentValue::Exact(at(i) + 1)),
                ],
                PALETTE[0].filled(),
            )
        }))?;
        chart.draw_series(rows.iter().enumerate().map(|(i, (_, n))| {
            Text::new(
                format!(" {n}"),
                (*n as f64, SegmentValue::CenterOf(at(i))),
                ("sans-serif", 13),
            )
        }))?;
        root.present()?;
        Ok(())
    })();
    match drawn {
        Ok(()) => format!("<figure>{svg}</figure>\n"),
        Err(e) => format!("<p><em>chart not drawn: {}</em></p>\n", escape(&e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(ts: u64, provider: &str, url: &str, status: u16, op: &str) -> String {
        serde_json::json!({"schema_version": 1, "run_id": "r1", "record_type": "attempt",
            "timestamp_ms": ts, "operation": op, "provider": provider, "url": url,
            "status": status, "elapsed_us": 1000 + ts % 7 * 1000, "bytes": 10})
        .to_string()
    }

    fn work(id: usize, outcome: &str, reason: Option<&str>, url: &str) -> String {
        serde_json::json!({"schema_version": 1, "run_id": "r1", "record_type": "work", "work_id": format!("W{id}"),
            "outcome": outcome, "reason": reason, "resolver": "unpaywall", "url": url, "elapsed_ms": 3, "attempts": 1})
        .to_string()
    }

    /// Every `<svg>` of the page, parsed as XML.
    fn svgs(html: &str) -> Vec<String> {
        html.match_indices("<svg")
            .map(|(i, _)| {
                let end = html[i..].find("</svg>").unwrap() + i + "</svg>".len();
                html[i..end].to_string()
            })
            .collect()
    }

    #[test]
    fn every_chart_has_its_data_and_server_strings_are_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.jsonl");
        let t0 = 1_700_000_000_000u64;
        let mut lines = Vec::new();
        for s in 0..20u64 {
            for k in 0..5 {
                let ts = t0 + s * 1000 + k * 100;
                let status = if s % 4 == 0 && k == 0 { 429 } else { 200 };
                lines.push(attempt(
                    ts,
                    "unpaywall",
                    "https://api.unpaywall.org/v2/x",
                    status,
                    "resolve",
                ));
                lines.push(attempt(
                    ts + 50,
                    "pub.example",
                    "https://pub.example:8443/a.pdf",
                    200,
                    "download",
                ));
            }
        }
        // a line out of order, a cut line, a host and reason a server chose
        lines.push(attempt(
            t0 - 3000,
            "unpaywall",
            "https://api.unpaywall.org/v2/y",
            503,
            "resolve",
        ));
        lines.push("{\"schema_version\":1,\"run_id\":\"r1\",\"record_ty".into());
        // the learned rate of unpaywall: read at 0 s, dropped at 4 s, climbing at 12 s
        for (at, rate, phase) in [(0, 10.0, "normal"), (4, 4.9, "reducing"), (12, 7.0, "recovering")] {
            lines.push(
                serde_json::json!({"schema_version": 1, "run_id": "r1", "record_type": "rate",
                    "timestamp_ms": t0 + at * 1000, "provider": "unpaywall", "host": "api.unpaywall.org",
                    "rate": rate, "ceiling": 10.0, "phase": phase})
                .to_string(),
            );
        }
        for i in 0..30 {
            lines.push(work(i, "downloaded", None, "https://pub.example:8443/a.pdf"));
        }
        lines.push(work(
            30,
            "failed",
            Some("http_error"),
            "https://evil.example/<script>alert(1)</script>",
        ));
        lines.push(work(
            32,
            "failed",
            Some("<script>alert(2)</script>"),
            "https://pub.example:8443/c.pdf",
        ));
        lines.push(work(31, "failed", Some("not_found"), "https://pub.example:8443/b.pdf"));
        lines.push(
            serde_json::json!({"schema_version": 1, "run_id": "r2", "record_type": "work", "work_id": "W99",
            "outcome": "failed", "reason": "timeout", "elapsed_ms": 1, "attempts": 1})
            .to_string(),
        );
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();

        let report = Report::read(&path, Some("r1")).unwrap();
        assert_eq!((report.works(), report.attempts()), (33, 201));
        let html = report.html();
        assert!(html.contains("1 unreadable lines skipped"), "the cut line is counted");
        assert!(!html.contains("<script"), "no script, the hostile host is escaped");
        assert!(!html.contains("src=") && !html.contains("href="), "nothing fetched");
        assert!(!html.contains("timeout"), "run r2 is not in r1's report");

        let charts = svgs(&html);
        assert_eq!(charts.len(), 5, "learned rate, requests, 429s, downloads, reasons");
        let parsed: Vec<roxmltree::Document<'_>> = charts
            .iter()
            .map(|svg| roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("{e}: {svg}")))
            .collect();
        let polylines = |doc: &roxmltree::Document<'_>| -> Vec<usize> {
            doc.descendants()
                .filter(|n| n.has_tag_name("polyline"))
                .map(|n| n.attribute("points").unwrap_or("").split_whitespace().count())
                .collect()
        };
        // the rate from its first reading (second 3 of 23) to the end, at the rates read
        let rate_lines = polylines(&parsed[0]);
        assert_eq!(rate_lines.iter().filter(|n| **n == 20).count(), 1, "{rate_lines:?}");
        let rate_texts: Vec<&str> = parsed[0].descendants().filter_map(|n| n.text()).collect();
        assert!(
            rate_texts.iter().any(|t| t.trim() == "unpaywall (api.unpaywall.org)"),
            "{rate_texts:?}"
        );
        let per = &report.rates["unpaywall (api.unpaywall.org)"];
        let steps = stepped(per, 23, 1);
        assert!(steps[..3].iter().all(|v| v.is_nan()), "{steps:?}");
        assert_eq!(
            (steps[3], steps[6], steps[7], steps[14], steps[15], steps[22]),
            (10.0, 10.0, 4.9, 4.9, 7.0, 7.0)
        );
        // 23 seconds (the early line shifts the start by 3 s), two providers, one line each
        // (plus the legend's short lines)
        for doc in &parsed[1..3] {
            let lines = polylines(doc);
            assert_eq!(lines.iter().filter(|n| **n == 23).count(), 2, "{lines:?}");
        }
        assert_eq!(polylines(&parsed[3]).iter().filter(|n| **n == 23).count(), 1);
        let texts: Vec<String> = parsed[4]
            .descendants()
            .filter(|n| n.has_tag_name("text"))
            .filter_map(|n| n.text())
            .map(|t| t.trim().to_string())
            .collect();
        for want in [
            "downloaded",
            "http_error",
            "not_found",
            "<script>alert(2)</script>",
            "30",
            "1",
        ] {
            assert!(texts.iter().any(|t| t == want), "{want} in {texts:?}");
        }
        assert!(html.contains("pub.example:8443"), "hosts keep their port");
        assert!(
            html.contains("&lt;script&gt;alert(2)"),
            "the hostile reason is shown escaped"
        );
        assert!(!html.contains("&amp;lt;"), "escaped once, not twice");
    }

    #[test]
    fn an_empty_manifest_says_no_data_and_a_missing_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.jsonl");
        std::fs::write(&path, "").unwrap();
        let html = Report::read(&path, None).unwrap().html();
        assert!(html.contains("No data.") && !html.contains("<svg"));
        let e = Report::read(&dir.path().join("nope.jsonl"), None).unwrap_err();
        assert!(e.to_string().starts_with("cannot read the manifest"), "{e}");
    }
}
