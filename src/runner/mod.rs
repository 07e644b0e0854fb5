//! The runner behind the `contentdownload` binary: its command line, settings, and what
//! each command does.

pub mod args;
pub mod exec;
mod rates;
pub mod settings;

pub use self::args::{Cli, Command, LogFormat, RateSpec, ReportArgs, RunArgs, StatusArgs};
pub use self::settings::{FileConfig, RunSettings, Source};
