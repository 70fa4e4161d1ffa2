//! `msgraph-webhooks subscribe`, `permissions`, and the Graph access and
//! subscription flags `subscribe` and `listen --subscribe` share.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::catalog::{self, PermissionType, ResourceDataRule};
use msgraph_webhooks::crypto::KeyRing;
use msgraph_webhooks::resync::DeltaResync;
use msgraph_webhooks::store::Backend;
use msgraph_webhooks::subscriptions::preflight::LifetimePolicy;
use msgraph_webhooks::subscriptions::{
    ClientCredentials, DEFAULT_GRAPH_URL, DEFAULT_TOKEN_URL, Declared, EncryptionCertificate,
    GraphClient, ManagerBuilder, Resync, SubscriptionManager,
};
use msgraph_webhooks::tunnel::{DEFAULT_AGENT_API, NgrokAgent};
use msgraph_webhooks::{BoxError, SubscriptionRegistry};

use crate::rich::Secret;
use crate::store::RecordStoreArgs;

/// How to reach Graph: shared by every command that talks to it.
#[derive(Debug, clap::Args)]
pub(crate) struct GraphArgs {
    /// Graph's base URL (the emulator's: http://127.0.0.1:4000/v1.0).
    #[arg(long, value_name = "URL", default_value = DEFAULT_GRAPH_URL, env = "MSGRAPH_WEBHOOKS_GRAPH_URL")]
    graph_url: String,

    /// The OAuth token endpoint; {tenant} stands for the tenant id.
    #[arg(long, value_name = "URL", default_value = DEFAULT_TOKEN_URL, env = "MSGRAPH_WEBHOOKS_TOKEN_URL")]
    token_url: String,

    /// Your app's (client) id in Entra ID.
    #[arg(long, value_name = "ID", env = "MSGRAPH_WEBHOOKS_CLIENT_ID")]
    pub(crate) client_id: Option<String>,

    /// Your app's client secret; keep it in MSGRAPH_WEBHOOKS_CLIENT_SECRET.
    #[arg(
        long,
        value_name = "SECRET",
        env = "MSGRAPH_WEBHOOKS_CLIENT_SECRET",
        hide_env_values = true
    )]
    client_secret: Option<Secret>,

    /// Plan by this emulator's clock instead of the system clock: its
    /// `GET /emulator/clock` (e.g. http://127.0.0.1:4000/emulator/clock), so
    /// against `emulate --time-scale 600` renewals come in minutes, as the
    /// emulator expires subscriptions. For local testing only.
    #[arg(long, value_name = "URL", env = "MSGRAPH_WEBHOOKS_GRAPH_CLOCK")]
    graph_clock: Option<String>,
}

impl GraphArgs {
    /// [`client`](Self::client), planning by `--graph-clock` when given.
    pub(crate) async fn clocked_client(
        &self,
        tenant: Option<&str>,
    ) -> Result<GraphClient, BoxError> {
        let client = self.client(tenant)?;
        let Some(url) = &self.graph_clock else {
            return Ok(client);
        };
        let clock = msgraph_webhooks::subscriptions::RemoteClock::follow(url).await?;
        tracing::info!(url, "planning by the emulator's clock");
        Ok(client.clock(std::sync::Arc::new(clock)))
    }

    /// A client with app-only tokens for `tenant`.
    pub(crate) fn client(&self, tenant: Option<&str>) -> Result<GraphClient, BoxError> {
        let tenant = tenant.ok_or(
            "pass --tenant-id (your Entra tenant id or domain): the app's token comes from it",
        )?;
        let client_id = self
            .client_id
            .as_deref()
            .ok_or("pass --client-id (your app's id in Entra ID)")?;
        let secret = self.client_secret.as_ref().ok_or(
            "pass the client secret in MSGRAPH_WEBHOOKS_CLIENT_SECRET (or --client-secret)",
        )?;
        let tokens = ClientCredentials::new(tenant, client_id, secret.expose())
            .token_url(self.token_url.replace("{tenant}", tenant));
        Ok(GraphClient::new(tokens).base_url(&self.graph_url))
    }
}

/// What and where to subscribe: shared by `subscribe` and `listen --subscribe`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubscriptionArgs {
    /// The HTTPS URL Graph reaches this receiver at, or `ngrok` to take it
    /// from the local ngrok agent (and follow it when it changes).
    /// Notifications go to it, lifecycle notifications to URL/lifecycle.
    #[arg(long, value_name = "URL|ngrok", env = "MSGRAPH_WEBHOOKS_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,

    /// The local ngrok agent's API.
    #[arg(long, value_name = "URL", default_value = DEFAULT_AGENT_API, env = "MSGRAPH_WEBHOOKS_NGROK_API")]
    ngrok_api: String,

    /// Seconds between looks at the ngrok agent's tunnels.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 5.0,
        env = "MSGRAPH_WEBHOOKS_NGROK_POLL_SECS"
    )]
    ngrok_poll_secs: f64,

    /// Ask for resource data (rich notifications), encrypted to the active certificate.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_RICH")]
    rich: bool,

    /// Minutes each subscription asks for (default: the longest its kind allows).
    #[arg(
        long,
        value_name = "MINUTES",
        env = "MSGRAPH_WEBHOOKS_LIFETIME_MINUTES"
    )]
    lifetime_minutes: Option<i64>,

    /// Cut a lifetime over the kind's maximum to the maximum instead of refusing it.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_CLAMP_LIFETIME")]
    clamp_lifetime: bool,

    /// Leave the subscriptions in place on exit (a later run with the same
    /// store takes them over) instead of deleting them.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_KEEP")]
    pub(crate) keep: bool,

    /// Seconds the subscriptions lease lasts unless its holder extends it
    /// (every third of that). Among instances sharing a store, a survivor
    /// takes over this long after the holder crashed, and a crashed
    /// instance counts as keeping its subscriptions this long.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600),
        env = "MSGRAPH_WEBHOOKS_LEASE_SECS"
    )]
    lease_secs: u64,

    #[command(flatten)]
    pub(crate) resync: ResyncArgs,
}

/// How missed notifications are made up for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ResyncMode {
    /// Run the resource's delta query from its stored cursor and print
    /// each change as a `resync` line (a warning for resources without one).
    Delta,
    /// Only log a warning: resync the resource yourself.
    Hook,
    /// Nothing.
    Off,
}

/// The resync flags of `subscribe` and `listen --subscribe`.
#[derive(Debug, clap::Args)]
pub(crate) struct ResyncArgs {
    /// After `missed`, a removed or recreated subscription, and on start:
    /// `delta` resyncs by the resource's delta query (cursors kept in the
    /// store), `hook` only warns, `off` does nothing.
    #[arg(long, value_enum, default_value_t = ResyncMode::Delta, env = "MSGRAPH_WEBHOOKS_RESYNC")]
    resync: ResyncMode,

    /// Hours between safety-net resyncs of every subscribed resource with a
    /// delta query; 0 turns them off.
    #[arg(
        long,
        value_name = "HOURS",
        default_value_t = 6.0,
        env = "MSGRAPH_WEBHOOKS_RESYNC_EVERY"
    )]
    resync_every: f64,

    /// The trigger mode: notifications of resources with a delta query are
    /// not printed; each triggers a delta round (those close together
    /// make one), and the round's changes are printed instead.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_RESYNC_TRIGGER")]
    resync_trigger: bool,

    /// Items per delta page asked of Graph (`Prefer: odata.maxpagesize`).
    #[arg(
        long,
        value_name = "N",
        value_parser = clap::value_parser!(u32).range(1..=1000),
        env = "MSGRAPH_WEBHOOKS_RESYNC_PAGE_SIZE"
    )]
    resync_page_size: Option<u32>,
}

impl ResyncArgs {
    /// The manager with the resync the flags ask for: `client` reads the
    /// delta queries, the changes go to `backend`'s inbox.
    pub(crate) fn configure(
        &self,
        builder: ManagerBuilder,
        client: GraphClient,
        backend: &Backend,
        tenant: Option<&str>,
    ) -> Result<ManagerBuilder, BoxError> {
        let warn = |resync: Resync| async move {
            tracing::warn!(
                key = %resync.key,
                resource = %resync.resource,
                subscription_id = %resync.subscription_id,
                reason = %resync.reason,
                "changes may have been missed: resync the resource (it has no delta query)"
            );
            Ok(())
        };
        match self.resync {
            ResyncMode::Off => Ok(builder),
            ResyncMode::Hook => Ok(builder.on_resync(warn)),
            ResyncMode::Delta => {
                let mut engine =
                    DeltaResync::builder(client, backend).tenant(tenant.unwrap_or("default"));
                if self.resync_every > 0.0 {
                    let every = Duration::try_from_secs_f64(self.resync_every * 3600.0)
                        .map_err(|_| "--resync-every: a number of hours")?;
                    engine = engine.every(every);
                }
                if let Some(size) = self.resync_page_size {
                    engine = engine.max_page_size(size);
                }
                Ok(builder
                    .delta_resync(engine.build())
                    .trigger_mode(self.resync_trigger)
                    .on_resync(warn))
            }
        }
    }

    /// Whether resync by delta query is on.
    pub(crate) fn by_delta(&self) -> bool {
        self.resync == ResyncMode::Delta
    }
}

impl SubscriptionArgs {
    /// The declarations of `specs` (`RESOURCE:CHANGETYPES`).
    fn declared(&self, specs: &[String]) -> Result<Vec<Declared>, BoxError> {
        specs
            .iter()
            .map(|spec| {
                // Chat ids hold colons: the change types follow the last one.
                let (resource, change_types) = spec.rsplit_once(':').ok_or_else(|| {
                    format!("'{spec}': write RESOURCE:CHANGETYPES, e.g. users/ada@contoso.com/messages:created,updated")
                })?;
                let change_types = catalog::parse_change_types(change_types).map_err(|e| {
                    format!("'{spec}': {e} Write RESOURCE:CHANGETYPES, e.g. users:updated,deleted")
                })?;
                let mut declared = Declared::new(resource, change_types).rich(self.rich);
                if let Some(minutes) = self.lifetime_minutes {
                    declared = declared.lifetime(time::Duration::minutes(minutes));
                }
                if self.clamp_lifetime {
                    declared = declared.lifetime_policy(LifetimePolicy::Clamp);
                }
                Ok(declared)
            })
            .collect()
    }

    /// A manager builder for `specs`, following the public URL.
    pub(crate) fn manager(
        &self,
        client: GraphClient,
        specs: &[String],
        port: u16,
        certificate: Option<EncryptionCertificate>,
    ) -> Result<ManagerBuilder, BoxError> {
        let mut builder =
            SubscriptionManager::builder(client).lease_ttl(Duration::from_secs(self.lease_secs));
        builder = match self.public_url.as_deref() {
            Some(url) if url.eq_ignore_ascii_case("ngrok") => {
                tracing::info!(api = %self.ngrok_api, port, "following the ngrok tunnel to this port");
                let poll = Duration::try_from_secs_f64(self.ngrok_poll_secs)
                    .map_err(|_| "--ngrok-poll-secs: a positive number of seconds")?
                    .max(Duration::from_millis(10));
                builder.public_urls(NgrokAgent::new(&self.ngrok_api).watch(port, poll))
            }
            Some(url) => builder.public_url(url),
            None => {
                return Err(
                    "pass --public-url https://… (where Graph reaches this receiver), or --public-url ngrok"
                        .into(),
                );
            }
        };
        if let Some(certificate) = certificate {
            builder = builder.certificate(certificate);
        } else if self.rich {
            return Err(
                "--rich needs a certificate: --key ID=PATH (from `msgraph-webhooks cert new`)"
                    .into(),
            );
        }
        for declared in self.declared(specs)? {
            builder = builder.declare(declared);
        }
        Ok(builder)
    }
}

/// The certificate of key `id` in `ring` (the last `--key` by default).
pub(crate) fn active_certificate(
    ring: &KeyRing,
    id: Option<&str>,
) -> Result<Option<EncryptionCertificate>, BoxError> {
    let Some(id) = id else {
        return Ok(None);
    };
    let key = ring
        .get(id)
        .ok_or_else(|| format!("no --key has the id '{id}'"))?;
    Ok(Some(EncryptionCertificate::from_key(id, key)?))
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Subscriptions to keep alive, as RESOURCE:CHANGETYPES
    /// (e.g. users/ada@contoso.com/messages:created,updated).
    #[arg(required = true, value_name = "RESOURCE:CHANGETYPES")]
    subscriptions: Vec<String>,

    /// Your Entra tenant (id or domain): the app's token comes from it.
    #[arg(long, value_name = "ID", env = "MSGRAPH_WEBHOOKS_TENANT_ID")]
    tenant_id: Option<String>,

    #[command(flatten)]
    graph: GraphArgs,

    #[command(flatten)]
    subscription: SubscriptionArgs,

    /// The local port the ngrok tunnel forwards to (with --public-url ngrok).
    #[arg(long, default_value_t = 8080, env = "MSGRAPH_WEBHOOKS_NGROK_PORT")]
    port: u16,

    /// The certificate rich subscriptions are encrypted to: ID=PATH, PATH a
    /// PEM (or DER) file holding it, e.g. cert.pem from `cert new`.
    #[arg(long, value_name = "ID=PATH", env = "MSGRAPH_WEBHOOKS_CERTIFICATE")]
    certificate: Option<String>,

    #[command(flatten)]
    store: RecordStoreArgs,

    /// Seconds to delete the subscriptions on SIGINT/SIGTERM; what Graph
    /// has not deleted by then stays until it expires. A second signal
    /// exits at once.
    #[arg(long, default_value_t = 10, env = "MSGRAPH_WEBHOOKS_DRAIN_SECS")]
    drain_secs: u64,
}

fn load_certificate(spec: &str) -> Result<EncryptionCertificate, BoxError> {
    let (id, path) = spec.split_once('=').ok_or("--certificate: write ID=PATH")?;
    EncryptionCertificate::from_file(id, std::path::Path::new(path))
        .map_err(|e| format!("--certificate {id}=…: {e}").into())
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let client = args.graph.clocked_client(args.tenant_id.as_deref()).await?;
    let certificate = args
        .certificate
        .as_deref()
        .map(load_certificate)
        .transpose()?;
    let store = args.store.open().await?;
    let registry = Arc::new(SubscriptionRegistry::new().source(store.backend.records()));
    let builder =
        args.subscription
            .manager(client.clone(), &args.subscriptions, args.port, certificate)?;
    if args.subscription.resync.by_delta() && store.backend.kind() == "memory" {
        tracing::warn!(
            "resynced changes go to the store's inbox, which is in memory here: \
             nobody hands them out. Use --data-dir, --redis or --postgres, shared with a `listen` or `work`"
        );
    }
    let manager = args
        .subscription
        .resync
        .configure(builder, client, &store.backend, args.tenant_id.as_deref())?
        .backend(&store.backend)
        .registry(registry)
        .build()?;
    let mut activity = manager.activity();
    let running = manager.start();
    let print = tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            match activity.recv().await {
                Ok(a) => println!("{a}"),
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
    crate::shutdown_signal().await;
    let keep = args.subscription.keep;
    running
        .stop_within(!keep, Duration::from_secs(args.drain_secs))
        .await?;
    // Let the last lines (the deletions) out.
    tokio::time::sleep(Duration::from_millis(50)).await;
    print.abort();
    if keep {
        tracing::info!("subscriptions kept (--keep)");
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Args)]
pub(crate) struct PermissionsArgs {
    /// A resource path, as in a subscription's `resource` (e.g. me/messages).
    resource: String,
}

/// `msgraph-webhooks permissions RESOURCE`.
pub(crate) fn permissions(args: &PermissionsArgs) -> Result<ExitCode, BoxError> {
    let resolved = catalog::resolve(&args.resource)?;
    let rules = resolved.rules();
    println!("resource: {}", resolved.path().as_str());
    println!("kind: {}", resolved.kind());
    for permission_type in PermissionType::ALL {
        let accepted = resolved.permissions(permission_type);
        match resolved.least_privileged(permission_type) {
            None => println!("{permission_type}: not supported"),
            Some(least) => {
                let others: Vec<String> = accepted
                    .iter()
                    .filter(|p| *p != least)
                    .map(ToString::to_string)
                    .collect();
                if others.is_empty() {
                    println!("{permission_type}: {least}");
                } else {
                    println!(
                        "{permission_type}: {least} (also accepted: {})",
                        others.join(", ")
                    );
                }
            }
        }
    }
    let types: Vec<&str> = rules.change_types.iter().map(|t| t.as_str()).collect();
    println!("change types: {}", types.join(", "));
    let basic = rules.max_lifetime(false).whole_minutes();
    let rich = rules.max_lifetime(true).whole_minutes();
    if basic == rich {
        println!("max lifetime: {basic} minutes");
    } else {
        println!("max lifetime: {basic} minutes ({rich} with resource data)");
    }
    println!(
        "resource data: {}",
        match rules.resource_data {
            ResourceDataRule::Optional => "optional (includeResourceData with a certificate)",
            ResourceDataRule::AlwaysEncrypted => "always, encrypted (a certificate is required)",
            ResourceDataRule::NotSupported => "not supported (basic notifications only)",
            _ => "unknown",
        }
    );
    let quotas = catalog::quotas(resolved.kind());
    if !quotas.is_empty() {
        let quotas: Vec<String> = quotas.iter().map(ToString::to_string).collect();
        println!(
            "quotas (active subscriptions; over one, Graph answers 403): {}",
            quotas.join("; ")
        );
    }
    match catalog::delta(resolved.path()) {
        catalog::Delta::Query(query) => {
            println!("delta query: {query}");
            let (delegated, application) = query.permissions;
            println!(
                "delta permissions: {delegated} (delegated), {application} (application); {}",
                query.source
            );
        }
        catalog::Delta::None(why) => println!("delta query: none ({why})"),
        _ => {}
    }
    if PermissionType::ALL
        .into_iter()
        .any(|t| resolved.permissions(t).iter().any(|p| p.resource_specific))
    {
        println!(
            "(* marks resource-specific consent: granted by installing the app in one chat or team)"
        );
    }
    Ok(ExitCode::SUCCESS)
}
