//! The `contentdownload` runner.
//!
//! For now it offers `fetch`: one URL through the shared client, streamed to a file. The
//! `run` and `status` subcommands of the full runner come with the pipeline.

use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Parser, Subcommand};
use contentdownload::error::BoxError;
use contentdownload::service::{HttpClient, HttpConfig};
use http_body_util::{BodyExt, Full};
use tokio::io::AsyncWriteExt;
use tower::ServiceExt;

#[derive(Debug, Parser)]
#[command(
    name = "contentdownload",
    version,
    about = "Polite, resilient downloads of open-access PDFs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Download one URL through the shared client and stream it to a file.
    Fetch {
        /// The http(s) URL to fetch.
        url: String,
        /// Where to write the body.
        #[arg(short, long, default_value = "download.bin")]
        output: PathBuf,
        /// Contact address for the User-Agent, as polite APIs ask.
        #[arg(long, env = "DOCSTOKG_MAILTO")]
        mailto: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match cli.command {
        Command::Fetch { url, output, mailto } => runtime.block_on(fetch(&url, &output, mailto)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn fetch(url: &str, output: &std::path::Path, mailto: Option<String>) -> Result<(), BoxError> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL {url:?}: {e}"))?;
    let client = HttpClient::new(&HttpConfig {
        mailto,
        ..HttpConfig::default()
    })?;
    let req = http::Request::get(uri).body(Full::<Bytes>::default())?;
    let response = client.oneshot(req).await?;
    if !response.status().is_success() {
        return Err(format!("the server answered {}", response.status()).into());
    }
    // Stream to a temporary name, then rename: a failed download leaves no half file.
    let partial = output.with_extension("part");
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    let mut body = response.into_body();
    let mut bytes = 0u64;
    let copied: Result<(), BoxError> = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                file.write_all(&data).await?;
                bytes += data.len() as u64;
            }
        }
        file.sync_all().await?;
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(e);
    }
    tokio::fs::rename(&partial, output).await?;
    eprintln!("wrote {bytes} bytes to {}", output.display());
    Ok(())
}
