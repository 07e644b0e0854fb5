//! The `contentdownload` runner: `run`, `status`, `fetch` and `report`.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use contentdownload::runner::exec::{self, Exit, RunError};
use contentdownload::runner::{Cli, Command, LogFormat, RunSettings};

fn init_logging(format: LogFormat) {
    // The telemetry layer's request spans (`info`) are left out of the log unless `RUST_LOG`
    // asks for them: formatting their fields for the log cost ~64,000 instructions per
    // request, four times the rest of the stack (`LAYER_COST_SUBSCRIBER=runner layer_cost`
    // under callgrind), for a prefix on the few lines logged inside a request.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("warn,contentdownload=info,contentdownload::layers::telemetry=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn exit(code: Exit) -> ExitCode {
    ExitCode::from(code as u8)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return exit(Exit::Fatal);
        }
    };
    let result = match cli.command {
        Command::Run(args) => match RunSettings::resolve(&args, exec::generated_run_id) {
            Err(e) => Err(RunError::Usage(e)),
            Ok(settings) => {
                init_logging(settings.log_format);
                let run = runtime.spawn(exec::run(settings, async {
                    // Ctrl-C: stop taking works, abandon the ones in flight cleanly
                    if tokio::signal::ctrl_c().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    eprintln!("Ctrl-C: stopping; finished works are kept, the rest is released for the next run");
                }));
                // A task rather than `block_on`'s own future: each finished work wakes the
                // run's dispatch, and a worker thread that is awake anyway takes that wake-up
                // instead of this parked thread (perf: 8.2 -> 6.4 futex calls per file).
                match runtime.block_on(run) {
                    Ok(result) => result,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    // (only a runtime shutting down cancels it, and nothing shuts it down here)
                    Err(e) => Err(RunError::Settings(format!("the run was cancelled: {e}").into())),
                }
            }
        },
        Command::Status(args) => {
            init_logging(LogFormat::Text);
            runtime.block_on(exec::status(&args))
        }
        Command::Fetch(args) => {
            init_logging(LogFormat::Text);
            runtime.block_on(exec::fetch(&args))
        }
        Command::Report(args) => {
            init_logging(LogFormat::Text);
            exec::report(&args)
        }
    };
    match result {
        Ok(code) => exit(code),
        Err(e) => {
            eprintln!("error: {e}");
            if e.disk_full() {
                eprintln!(
                    "the disk is full: make room and run the same command again; what this run \
                     downloaded and recorded is kept, and the next run goes on from there"
                );
            }
            exit(e.exit())
        }
    }
}
