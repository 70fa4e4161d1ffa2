//! `msgraph-webhooks delta RESOURCE`: one round of a resource's delta query,
//! its changes as `resync` JSON lines, its cursor kept in the store.

use std::process::ExitCode;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::handler::JsonLines;
use msgraph_webhooks::resync::{DeltaResync, ResyncReason};

use crate::store::RecordStoreArgs;
use crate::subscribe::GraphArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// A subscription resource with a delta query (e.g.
    /// users/ada@contoso.com/mailFolders('Inbox')/messages, users,
    /// drives/{id}/root); `permissions RESOURCE` shows its delta query.
    resource: String,

    /// Without a stored cursor, start from now: print nothing and store a
    /// cursor, so the next run prints what changed since. (Without it, the
    /// first run prints every item there is.)
    #[arg(long, env = "MSGRAPH_WEBHOOKS_DELTA_FROM_NOW")]
    from_now: bool,

    /// Only these properties (`$select`, comma-separated), for a cursor
    /// that starts now; a stored cursor keeps its selection.
    #[arg(
        long,
        value_name = "PROPS",
        value_delimiter = ',',
        env = "MSGRAPH_WEBHOOKS_DELTA_SELECT"
    )]
    select: Vec<String>,

    /// Items per page asked of Graph (`Prefer: odata.maxpagesize`).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1000),
        env = "MSGRAPH_WEBHOOKS_DELTA_PAGE_SIZE"
    )]
    page_size: Option<u32>,

    /// Your Entra tenant (id or domain): the app's token comes from it, and
    /// cursors are kept per tenant.
    #[arg(long, value_name = "ID", env = "MSGRAPH_WEBHOOKS_TENANT_ID")]
    tenant_id: Option<String>,

    #[command(flatten)]
    graph: GraphArgs,

    #[command(flatten)]
    store: RecordStoreArgs,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    // Refuse a resource without a delta query before asking for a token.
    DeltaResync::query(&args.resource).map_err(|e| format!("{}: {e}", args.resource))?;
    let client = args.graph.clocked_client(args.tenant_id.as_deref()).await?;
    let store = args.store.open().await?;
    if store.backend.kind() == "memory" {
        tracing::warn!(
            "the cursor is kept in memory: the next run starts over (use --data-dir, --redis or --postgres)"
        );
    }
    let mut engine = DeltaResync::builder(client, &store.backend)
        .tenant(args.tenant_id.as_deref().unwrap_or("default"))
        .initial_sync(!args.from_now)
        .select(args.select)
        .deliver_to(JsonLines::stdout());
    if let Some(size) = args.page_size {
        engine = engine.max_page_size(size);
    }
    let round = engine
        .build()
        .run(&args.resource, ResyncReason::Requested)
        .await?;
    if round.busy {
        return Err("another instance is running this cursor's round; try again".into());
    }
    if round.baseline {
        tracing::info!(
            pages = round.pages,
            "cursor stored: the next run prints what changed from now"
        );
    } else {
        tracing::info!(
            pages = round.pages,
            changes = round.delivered,
            resets = round.resets,
            "delta round done; cursor stored"
        );
    }
    Ok(ExitCode::SUCCESS)
}
