//! `msgraph-webhooks listen`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::listener::{ServerConfig, TlsConfig};
use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::subscriptions::SubscriptionManager;
use msgraph_webhooks::{
    BoxError, ClientState, Handler, Receiver, ReceiverBuilder, SubscriptionRegistry,
};

use crate::store::StoreArgs;
use crate::subscribe::{GraphArgs, SubscriptionArgs, active_certificate};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "MSGRAPH_WEBHOOKS_ADDR")]
    addr: SocketAddr,

    /// The clientState your subscriptions were created with; items with any
    /// other value are dropped (and still answered 202).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_CLIENT_STATE", hide_env_values = true)]
    client_state: Option<crate::rich::Secret>,

    /// Accept items whatever their clientState. Anybody who can reach the port
    /// can then inject notifications: for local experiments only.
    #[arg(
        long,
        env = "MSGRAPH_WEBHOOKS_ALLOW_ANY_CLIENT_STATE",
        conflicts_with = "client_state"
    )]
    allow_any_client_state: bool,

    /// Authenticate each item by the clientState of its subscription's
    /// record in the store, as written by `subscribe` or `listen --subscribe`
    /// on the same --data-dir, --redis or --postgres: a receiver-only instance of a
    /// split deployment. Items of subscriptions without a record are dropped.
    #[arg(
        long,
        env = "MSGRAPH_WEBHOOKS_SUBSCRIPTION_RECORDS",
        conflicts_with_all = ["client_state", "allow_any_client_state", "memory"]
    )]
    subscription_records: bool,

    /// Largest notification body accepted, in bytes; larger ones get 413.
    #[arg(long, default_value_t = 1024 * 1024, env = "MSGRAPH_WEBHOOKS_MAX_BODY")]
    max_body: usize,

    /// Items waiting in the store at most (every process's, on a shared
    /// store); beyond it deliveries get 503 with Retry-After, so Graph holds
    /// them and retries later (for up to 4 hours) instead of the backlog
    /// filling the disk while the workers fall behind [default: no bound]
    #[arg(long, value_name = "N", env = "MSGRAPH_WEBHOOKS_MAX_BACKLOG",
          value_parser = clap::value_parser!(u64).range(1..))]
    max_backlog: Option<u64>,

    #[command(flatten)]
    store: StoreArgs,

    #[command(flatten)]
    work: WorkArgs,

    /// Open connections at most. At the cap, the oldest connection that is
    /// not answering a complete request gives way to a new one.
    #[arg(long, default_value_t = 1024, env = "MSGRAPH_WEBHOOKS_MAX_CONNECTIONS")]
    max_connections: usize,

    /// Open connections at most from one IP address (default: half of
    /// --max-connections; 0: no limit). Behind ngrok or a reverse proxy
    /// every connection has the proxy's address: a peer at its limit gives
    /// up its own idle connections first, so only a proxy busy on half the
    /// cap at once would be refused.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_MAX_CONNECTIONS_PER_PEER")]
    max_connections_per_peer: Option<usize>,

    /// Also serve HTTP/2 with prior knowledge (h2c). Off by default: Graph
    /// and ngrok speak HTTP/1.1 to this port; turn it on for a proxy that
    /// talks h2c to its backends.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_HTTP2")]
    http2: bool,

    /// Serve HTTPS with this certificate chain (PEM: the certificate, then
    /// its intermediates, e.g. Let's Encrypt's fullchain.pem), so Graph can
    /// call the port without a proxy in front. TLS 1.2+; h2 by ALPN with
    /// --http2. The files are re-read when they change (a renewal): new
    /// connections get the new certificate, open ones keep going.
    #[arg(
        long,
        value_name = "PEM",
        env = "MSGRAPH_WEBHOOKS_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM, e.g. Let's Encrypt's privkey.pem).
    #[arg(
        long,
        value_name = "PEM",
        env = "MSGRAPH_WEBHOOKS_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<std::path::PathBuf>,

    /// Seconds between checks of the --tls-cert and --tls-key files for a
    /// renewal.
    #[arg(
        long,
        default_value_t = 5.0,
        env = "MSGRAPH_WEBHOOKS_TLS_RELOAD_SECS",
        hide = true
    )]
    tls_reload_secs: f64,

    #[command(flatten)]
    admin: crate::admin::AdminArgs,

    /// Also create these subscriptions and keep them alive while listening,
    /// as RESOURCE:CHANGETYPES (repeat, or separate with ';'); each gets a
    /// random clientState of its own, kept in the store. Needs --public-url
    /// and Graph access (--tenant-id, --client-id, the client secret).
    #[arg(
        long = "subscribe",
        value_name = "RESOURCE:CHANGETYPES",
        env = "MSGRAPH_WEBHOOKS_SUBSCRIBE",
        value_delimiter = ';'
    )]
    subscribe: Vec<String>,

    #[command(flatten)]
    graph: GraphArgs,

    #[command(flatten)]
    subscription: SubscriptionArgs,
}

/// What the workers do; shared with `work`.
#[derive(Debug, clap::Args)]
pub(crate) struct WorkArgs {
    /// Workers calling the handler (default: twice the cores, at least 4).
    /// With `listen`, 0 only ingests, leaving the items to `msgraph-webhooks
    /// work`; `work` needs at least 1.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_WORKERS")]
    pub(crate) workers: Option<usize>,

    /// Attempts per item before it is dead-lettered.
    #[arg(long, default_value_t = 5, env = "MSGRAPH_WEBHOOKS_MAX_ATTEMPTS")]
    pub(crate) max_attempts: u32,

    /// Log every rejected item at warn with its reason and subscription id
    /// (never a secret). By default the first of each reason is logged, and
    /// the rest once a minute as a count.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_LOG_REJECTIONS")]
    pub(crate) log_rejections: bool,

    /// Seconds to drain connections and workers on SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10, env = "MSGRAPH_WEBHOOKS_DRAIN_SECS")]
    pub(crate) drain_secs: u64,

    #[command(flatten)]
    pub(crate) rich: crate::rich::RichArgs,

    #[command(flatten)]
    pub(crate) forward: crate::forward::ForwardArgs,
}

pub(crate) async fn run(mut args: Args) -> Result<ExitCode, BoxError> {
    let subscribing = !args.subscribe.is_empty();
    let from_records = subscribing || args.subscription_records;
    let registry = match (
        args.client_state.take(),
        args.allow_any_client_state,
        from_records,
    ) {
        (Some(state), _, _) => {
            SubscriptionRegistry::with_client_state(ClientState::new(state.expose()))
        }
        (None, true, _) => {
            tracing::warn!("--allow-any-client-state: notifications are not authenticated");
            SubscriptionRegistry::allow_any()
        }
        // Each subscription is authenticated by its own clientState, from the records.
        (None, false, true) => SubscriptionRegistry::new(),
        (None, false, false) => {
            return Err(
                "pass --client-state (the clientState of your subscriptions), \
                        --subscribe RESOURCE:CHANGETYPES (subscriptions with their own), \
                        --subscription-records (those another process created on this store), \
                        or --allow-any-client-state for a local experiment"
                    .into(),
            );
        }
    };
    let store = args.store.open().await?;
    let output = args.work.forward.output().await?;
    if args.subscription_records {
        tracing::info!("authenticating each item by its subscription's record in the store");
    }
    let registry = Arc::new(if from_records {
        registry.source(store.backend.records())
    } else {
        registry
    });
    if !subscribing {
        let builder = store.configure(Receiver::builder(output));
        return serve(args, builder, registry, None).await;
    }
    // Validation tokens of rich subscriptions are issued to our app.
    if args.work.rich.app_ids.is_empty()
        && args.work.rich.newest_key_id().is_some()
        && let Some(client_id) = &args.graph.client_id
    {
        args.work.rich.app_ids.push(client_id.clone());
    }
    let client = args
        .graph
        .clocked_client(args.work.rich.tenant_ids.first().map(String::as_str))
        .await?;
    let certificate = match args.work.rich.key_ring()? {
        Some(ring) => active_certificate(&ring, args.work.rich.newest_key_id())?,
        None => None,
    };
    let builder = args.subscription.manager(
        client.clone(),
        &args.subscribe,
        args.addr.port(),
        certificate,
    )?;
    let manager = args
        .subscription
        .resync
        .configure(
            builder,
            client,
            &store.backend,
            args.work.rich.tenant_ids.first().map(String::as_str),
        )?
        .backend(&store.backend)
        .registry(registry.clone())
        .build()?;
    let builder = store.configure(Receiver::builder(manager.handler(output)));
    serve(args, builder, registry, Some(manager)).await
}

/// Serves until a signal; with a manager, subscribes once the port is bound
/// (Graph's handshake must find it) and deletes the subscriptions after
/// the drain unless `--keep`.
async fn serve<H: Handler>(
    args: Args,
    builder: ReceiverBuilder<H>,
    registry: Arc<SubscriptionRegistry>,
    manager: Option<SubscriptionManager>,
) -> Result<ExitCode, BoxError> {
    let drain = Duration::from_secs(args.work.drain_secs);
    let mut builder = builder
        .registry(registry)
        .max_body(args.max_body)
        .retry(RetryPolicy::new(
            args.work.max_attempts,
            Duration::from_secs(1),
        ))
        .worker_drain(drain);
    if let Some(workers) = args.work.workers {
        builder = builder.workers(workers);
    }
    if let Some(max) = args.max_backlog {
        builder = builder.max_backlog(max);
    }
    builder = args.work.rich.configure(builder)?;
    builder = args.admin.configure(builder);
    // A bad pair fails here, before the port is bound.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(
            TlsConfig::from_pem_files(cert, key)
                .map_err(|e| format!("--tls-cert/--tls-key: {e}"))?
                .poll_interval(Duration::try_from_secs_f64(args.tls_reload_secs)?),
        ),
        _ => None,
    };
    let receiver = builder.build()?;
    receiver
        .metrics()
        .log_every_rejection(args.work.log_rejections);
    let listener = msgraph_webhooks::listener::bind(args.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let admin = args.admin.bind().await?;
    let mut config = ServerConfig::default();
    config.max_connections = args.max_connections;
    config.max_connections_per_peer = args.max_connections_per_peer;
    config.http2 = args.http2;
    config.drain_timeout = drain;
    config.tls = tls;
    let running = manager.as_ref().map(SubscriptionManager::start);
    let (signalled, mut signal) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        crate::shutdown_signal().await;
        let _ = signalled.send(true);
    };
    // The manager stops alongside the drain, within the same --drain-secs:
    // a Graph that hangs holds neither up.
    let stop = async move {
        let Some(running) = running else {
            return Ok(());
        };
        let _ = signal.wait_for(|stopping| *stopping).await;
        running.stop_within(!args.subscription.keep, drain).await
    };
    let (served, stopped) = tokio::join!(
        receiver.serve_with_admin(listener, admin, &config, shutdown),
        stop
    );
    stopped?;
    served?;
    Ok(ExitCode::SUCCESS)
}
