//! Running the `contentdownload` binary from an integration test, shared by the test files
//! that exercise it end to end.
#![allow(dead_code)]

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
