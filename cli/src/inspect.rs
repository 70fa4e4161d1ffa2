//! `msgraph-webhooks inspect FILE`: verify and decrypt a captured body offline.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use msgraph_webhooks::crypto::KeyRing;
use msgraph_webhooks::notification::{Envelope, ItemHead};
use msgraph_webhooks::worker::Verifier;
use msgraph_webhooks::{BoxError, ClientState, SubscriptionRegistry};

use crate::rich::RichArgs;

#[derive(Debug, clap::Args)]
#[command(mut_arg("tenant_ids", |arg| arg.help(
    "Accept validation tokens of these tenants only (default: any). Repeatable."
)))]
pub(crate) struct Args {
    /// The captured notification body (JSON); `-` reads standard input.
    file: PathBuf,

    #[command(flatten)]
    rich: RichArgs,

    /// Also check each item's clientState against this one (constant time);
    /// items with another are rejected as client_state_mismatch.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_CLIENT_STATE", hide_env_values = true)]
    client_state: Option<crate::rich::Secret>,

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
    let heads = item_heads(&body);
    let has_encrypted_items = heads.iter().flatten().any(|head| head.encrypted);
    let keys = Arc::new(args.rich.key_ring()?.unwrap_or_else(KeyRing::new));
    let verifier = if args.insecure_skip_token_validation {
        eprintln!("warning: validation tokens are NOT checked (--insecure-skip-token-validation)");
        Verifier::without_token_validation(keys)
    } else if args.rich.app_ids.is_empty() && !has_encrypted_items {
        // Basic items carry no tokens to check: nothing is skipped.
        Verifier::without_token_validation(keys)
    } else if args.rich.app_ids.is_empty() {
        return Err(
            "the capture has encrypted items: pass --app-id (the audience of their \
                    validation tokens), or --insecure-skip-token-validation to decrypt \
                    without checking them"
                .into(),
        );
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
    let registry = args
        .client_state
        .map(|state| SubscriptionRegistry::with_client_state(ClientState::new(state.expose())));
    let mut all_accepted = true;
    let mut stdout = std::io::stdout().lock();
    for (index, outcome) in outcomes.iter().enumerate() {
        if let Some(registry) = &registry {
            let head = heads.get(index).and_then(Option::as_ref);
            let checked = registry.check(
                head.and_then(|h| h.subscription_id.as_deref())
                    .unwrap_or_default(),
                head.and_then(|h| h.client_state.as_deref()),
            );
            if let Err(reason) = checked {
                all_accepted = false;
                eprintln!("item {index}: rejected: {}", reason.as_str());
                continue;
            }
        }
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

/// What `inspect` reads of an item before verifying it.
struct Head {
    subscription_id: Option<String>,
    client_state: Option<String>,
    encrypted: bool,
}

/// Each item's head, in order (`None` for an item without one); empty when
/// the body is not a notification collection (the verifier says so).
fn item_heads(body: &[u8]) -> Vec<Option<Head>> {
    Envelope::parse(body).map_or_else(
        |_| Vec::new(),
        |envelope| {
            envelope
                .items
                .iter()
                .map(|raw| {
                    ItemHead::parse(raw).map(|head| Head {
                        encrypted: head.is_encrypted(),
                        subscription_id: head.subscription_id.map(|s| s.into_owned()),
                        client_state: head.client_state.map(|s| s.into_owned()),
                    })
                })
                .collect()
        },
    )
}
