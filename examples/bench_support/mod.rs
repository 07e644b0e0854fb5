//! What the bench examples share: parse the arguments, show the runner's logs when
//! `RUST_LOG` is set, run the bench on a multi-threaded runtime, and turn the outcome into
//! an exit code (2 for bad arguments, 1 for a failed bench).

pub mod servers;

use std::future::Future;
use std::process::ExitCode;

/// Runs `bench(args)` as the program `name`: `parse` reads the arguments (an error exits 2),
/// `RUST_LOG=info` (or debug, ...) shows the runner's logs on stderr, and an error of the
/// bench is printed and exits 1.
pub fn main<A, F>(name: &str, parse: impl FnOnce() -> Result<A, String>, bench: impl FnOnce(A) -> F) -> ExitCode
where
    F: Future<Output = Result<(), String>>,
{
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(bench(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
