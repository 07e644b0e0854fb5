//! The runner behind the `contentdownload` binary: its command line and settings.

pub mod args;
pub mod settings;

pub use self::args::{Cli, Command, LogFormat, RateSpec, RunArgs, StatusArgs};
pub use self::settings::{FileConfig, RunSettings, Source};
