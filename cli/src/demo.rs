//! `msgraph-webhooks demo`: emulator and receiver in one process.

use std::process::ExitCode;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::emulator::demo;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {}

pub(crate) async fn run(_args: Args) -> Result<ExitCode, BoxError> {
    let mut stdout = std::io::stdout();
    demo::run(&mut stdout).await?;
    Ok(ExitCode::SUCCESS)
}
