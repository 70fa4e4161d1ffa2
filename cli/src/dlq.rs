//! `msgraph-webhooks dlq list|replay`: the dead letters of a store.

use std::io::Write as _;
use std::process::ExitCode;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::notification::Notification;
use msgraph_webhooks::store::EntryId;

use crate::store::DlqStoreArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    #[command(subcommand)]
    command: Command,

    #[command(flatten)]
    store: DlqStoreArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the dead letters, oldest first, one JSON line each.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Move dead letters back into the inbox: the ones named, or --all.
    /// An id that names no dead letter is an error (exit 1).
    Replay {
        /// Ids as `dlq list` prints them.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        ids: Vec<String>,

        /// Every dead letter.
        #[arg(long)]
        all: bool,
    },
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let store = args.store.open().await?;
    let dead = store.backend.dead_letters();
    match args.command {
        Command::List { limit } => {
            let mut out = std::io::stdout().lock();
            for letter in dead.list(limit).await? {
                let summary = match Notification::from_json(letter.item.raw.get()) {
                    Ok(Notification::Change(c)) => serde_json::json!({
                        "id": c.id,
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
                    "id": letter.id.as_str(),
                    "deadAtMs": letter.dead_at_ms,
                    "attempts": letter.attempts,
                    "reason": letter.reason,
                    "item": summary,
                });
                writeln!(out, "{line}")?;
            }
            out.flush()?;
        }
        Command::Replay { all: true, .. } => {
            let moved = dead.replay(Vec::new()).await?;
            println!("{moved} dead letter(s) moved back into the inbox");
        }
        Command::Replay { ids, all: false } => {
            // One at a time, so an id that names nothing is told apart
            // (an empty list would mean all of them).
            let (mut moved, mut unknown) = (0, Vec::new());
            for id in ids {
                match dead.replay(vec![EntryId::new(id.clone())]).await? {
                    0 => unknown.push(id),
                    n => moved += n,
                }
            }
            println!("{moved} dead letter(s) moved back into the inbox");
            if !unknown.is_empty() {
                eprintln!(
                    "error: no dead letter has the id(s) {} (see `dlq list`)",
                    unknown.join(", ")
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
