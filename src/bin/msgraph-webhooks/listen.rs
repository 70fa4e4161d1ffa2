//! `msgraph-webhooks listen`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::handler::JsonLines;
use msgraph_webhooks::listener::ServerConfig;
use msgraph_webhooks::worker::RetryPolicy;
use msgraph_webhooks::{BoxError, ClientState, Receiver, SubscriptionRegistry};

use crate::store::StoreArgs;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "MSGRAPH_WEBHOOKS_ADDR")]
    addr: SocketAddr,

    /// The clientState your subscriptions were created with; items with any
    /// other value are dropped (and still answered 202).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_CLIENT_STATE", hide_env_values = true)]
    client_state: Option<String>,

    /// Accept items whatever their clientState. Anybody who can reach the port
    /// can then inject notifications: for local experiments only.
    #[arg(
        long,
        env = "MSGRAPH_WEBHOOKS_ALLOW_ANY_CLIENT_STATE",
        conflicts_with = "client_state"
    )]
    allow_any_client_state: bool,

    /// Largest notification body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 1024 * 1024, env = "MSGRAPH_WEBHOOKS_MAX_BODY")]
    max_body: usize,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    work: WorkArgs,

    /// Open connections at most.
    #[arg(long, default_value_t = 1024, env = "MSGRAPH_WEBHOOKS_MAX_CONNECTIONS")]
    max_connections: usize,
}

/// What the workers do; shared with `work`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkArgs {
    /// Workers calling the handler (default: twice the cores, at least 4);
    /// 0 only ingests, leaving the items to `msgraph-webhooks work`.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_WORKERS")]
    pub(crate) workers: Option<usize>,

    /// Attempts per item before it is dead-lettered.
    #[arg(long, default_value_t = 5, env = "MSGRAPH_WEBHOOKS_MAX_ATTEMPTS")]
    pub(crate) max_attempts: u32,

    /// Seconds to drain connections and workers on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10, env = "MSGRAPH_WEBHOOKS_DRAIN_SECS")]
    pub(crate) drain_secs: u64,

    #[command(flatten)]
    pub(crate) rich: crate::rich::RichArgs,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let registry = match (args.client_state, args.allow_any_client_state) {
        (Some(state), _) => SubscriptionRegistry::with_client_state(ClientState::new(state)),
        (None, true) => {
            tracing::warn!("--allow-any-client-state: notifications are not authenticated");
            SubscriptionRegistry::allow_any()
        }
        (None, false) => {
            return Err(
                "pass --client-state (the clientState of your subscriptions), \
                        or --allow-any-client-state for a local experiment"
                    .into(),
            );
        }
    };
    let store = args.store.open().await?;
    let drain = Duration::from_secs(args.work.drain_secs);
    let mut builder = store
        .configure(Receiver::builder(JsonLines::stdout()))
        .registry(Arc::new(registry))
        .max_body(args.max_body)
        .retry(RetryPolicy::new(
            args.work.max_attempts,
            Duration::from_secs(1),
        ))
        .worker_drain(drain);
    if let Some(workers) = args.work.workers {
        builder = builder.workers(workers);
    }
    builder = args.work.rich.configure(builder)?;
    let receiver = builder.build()?;
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let mut config = ServerConfig::default();
    config.max_connections = args.max_connections;
    config.drain_timeout = drain;
    receiver
        .serve(listener, &config, crate::shutdown_signal())
        .await?;
    Ok(ExitCode::SUCCESS)
}
