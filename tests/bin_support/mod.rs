//! Running the `contentdownload` binary from an integration test, shared by the test files
//! that exercise it end to end.
#![allow(dead_code)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

/// The binary under test, built by cargo for the integration tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_contentdownload");

/// Runs the binary with a clean `DOCSTOKG_*` environment plus `env`, logging at `warn`
/// (unless `env` sets `RUST_LOG`), within two minutes.
pub async fn contentdownload(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = command(args, env);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the binary finished within 2 minutes")
        .expect("the binary ran")
}

/// The binary's command with a clean `DOCSTOKG_*` environment plus `env`, logging at `warn`
/// (unless `env` sets `RUST_LOG`), for a test that starts (and perhaps kills) it itself.
pub fn command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("DOCSTOKG_")) {
        cmd.env_remove(k);
    }
    cmd.env("RUST_LOG", "warn").args(args).envs(env.iter().copied());
    cmd
}

/// Panics if any of `secrets` appears in `text` (what `what` names), showing 200 bytes of
/// its surroundings rather than the whole text (some files are binary).
pub fn assert_absent(secrets: &[&str], what: &str, text: &str) {
    for secret in secrets {
        if let Some(at) = text.find(secret) {
            let mut from = at.saturating_sub(200);
            while !text.is_char_boundary(from) {
                from -= 1;
            }
            let mut to = (at + 200).min(text.len());
            while !text.is_char_boundary(to) {
                to += 1;
            }
            panic!("{secret} leaked into {what}: …{}…", &text[from..to]);
        }
    }
}

/// Every file under `dir`, as text (lossy), with its name.
pub fn files_under(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                out.push((path.display().to_string(), String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

/// Writes `n` OpenAlex-shaped works to `path`, one JSON line each: `W5000`, `W5001`, …, each
/// with a DOI (`10.5555/w{i}`), a title and `best_oa_location.pdf_url` = `pdf_url(i)`.
pub fn write_works(path: &Path, n: usize, pdf_url: impl Fn(usize) -> String) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({
                "id": format!("https://openalex.org/W{}", 5000 + i),
                "doi": format!("https://doi.org/10.5555/w{i}"),
                "title": format!("Work {i}"),
                "best_oa_location": {"pdf_url": pdf_url(i)}
            })
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}
