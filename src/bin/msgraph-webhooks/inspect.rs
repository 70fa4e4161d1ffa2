//! `msgraph-webhooks inspect FILE`: verify and decrypt a captured body offline.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::crypto::KeyRing;
use msgraph_webhooks::worker::Verifier;

use crate::rich::RichArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The captured notification body (JSON); `-` reads standard input.
    file: PathBuf,

    #[command(flatten)]
    rich: RichArgs,

    /// Decrypt without checking the validation tokens, e.g. for a capture
    /// whose tokens have expired. Anybody can forge what this accepts.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_INSECURE_SKIP_TOKEN_VALIDATION")]
    insecure_skip_token_validation: bool,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let body = if args.file.as_os_str() == "-" {
        msgraph_webhooks::files::read_all_capped(std::io::stdin())
            .map_err(|e| format!("cannot read standard input: {e}"))?
    } else {
        msgraph_webhooks::files::read_capped(&args.file)
            .map_err(|e| format!("cannot read {}: {e}", args.file.display()))?
    };
    let keys = Arc::new(args.rich.key_ring()?.unwrap_or_else(KeyRing::new));
    let verifier = if args.insecure_skip_token_validation {
        eprintln!("warning: validation tokens are NOT checked (--insecure-skip-token-validation)");
        Verifier::without_token_validation(keys)
    } else if args.rich.app_ids.is_empty() {
        return Err("pass --app-id (the audience of the validation tokens), \
                    or --insecure-skip-token-validation to decrypt without checking them"
            .into());
    } else {
        Verifier::new(keys, args.rich.validator()?)
    };
    let outcomes = match verifier.inspect(&body).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            eprintln!("rejected: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut all_accepted = true;
    let mut stdout = std::io::stdout().lock();
    for (index, outcome) in outcomes.iter().enumerate() {
        match outcome {
            Ok(event) => writeln!(stdout, "{}", event.to_json())?,
            Err(reason) => {
                all_accepted = false;
                eprintln!("item {index}: rejected: {reason}");
            }
        }
    }
    stdout.flush()?;
    Ok(if all_accepted {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
