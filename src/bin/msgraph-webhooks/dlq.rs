//! `msgraph-webhooks dlq list|replay`: the dead letters of a store.

use std::io::Write as _;
use std::process::ExitCode;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::inbox::EntryId;
use msgraph_webhooks::notification::Notification;

use crate::store::StoreArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the dead letters, oldest first, one JSON line each.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Move dead letters back into the inbox (all of them without IDs).
    Replay {
        /// Ids as `dlq list` prints them.
        ids: Vec<String>,
    },
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let store = args.store.open().await?;
    let dead = store
        .dead_letters
        .ok_or("this store keeps no dead letters")?;
    match args.command {
        Command::List { limit } => {
            let mut out = std::io::stdout().lock();
            for letter in dead.list(limit).await? {
                let summary = match Notification::from_json(letter.item.raw.get()) {
                    Ok(Notification::Change(c)) => serde_json::json!({
                        "subscriptionId": c.subscription_id,
                        "changeType": c.change_type,
                        "resource": c.resource,
                    }),
                    Ok(Notification::Lifecycle(l)) => serde_json::json!({
                        "subscriptionId": l.subscription_id,
                        "lifecycleEvent": l.lifecycle_event,
                    }),
                    _ => serde_json::json!({}),
                };
                let line = serde_json::json!({
                    "id": letter.id.0,
                    "deadAtMs": letter.dead_at_ms,
                    "attempts": letter.attempts,
                    "reason": letter.reason,
                    "item": summary,
                });
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        Command::Replay { ids } => {
            let moved = dead.replay(ids.into_iter().map(EntryId).collect()).await?;
            println!("{moved} dead letter(s) moved back into the inbox");
        }
    }
    Ok(ExitCode::SUCCESS)
}
