//! [`EmulatorBuilder`]: the emulator's settings, and starting it.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::delivery::{DeliveryLog, Engine};
use super::identity::Identity;
use super::resources::Resources;
use super::store::Store;
use super::sync::DeltaState;
use super::{
    ApiLimits, Clock, Config, Core, DeliveryPolicy, Emulator, Reauthorization, Throttling, api,
    lifecycle, rate, tls,
};
use crate::tokens::TokenVersion;

/// Builds an [`Emulator`]; see [`Emulator::builder`].
#[derive(Debug, Default)]
#[must_use]
pub struct EmulatorBuilder {
    config: Config,
}

impl EmulatorBuilder {
    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The default tenant.
    pub fn tenant_id(mut self, tenant_id: impl Into<String>) -> Self {
        self.config.tenant_id = tenant_id.into();
        self
    }

    /// Narrows the application permissions clients get.
    pub fn app_permissions<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> Self {
        self.config.app_permissions = Some(roles.into_iter().map(Into::into).collect());
        self
    }

    /// Emulated seconds per real second (e.g. 3600: an hour per second).
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.config.time_scale = scale;
        self
    }

    /// How much faster the timeouts run than Graph's.
    pub fn timeout_scale(mut self, scale: f64) -> Self {
        self.config.timeout_scale = scale;
        self
    }

    /// The claim set of validation tokens.
    pub fn token_version(mut self, version: TokenVersion) -> Self {
        self.config.token_version = version;
        self
    }

    /// Sends `validationTokens: null` for this tenant's rich notifications.
    pub fn misconfigured_tenant(mut self, tenant_id: impl Into<String>) -> Self {
        self.config.misconfigured_tenants.push(tenant_id.into());
        self
    }

    /// Timeouts, retries, batching.
    pub fn delivery(mut self, policy: DeliveryPolicy) -> Self {
        self.config.delivery = policy;
        self
    }

    /// The slow and drop states.
    pub fn throttling(mut self, throttling: Throttling) -> Self {
        self.config.throttling = throttling;
        self
    }

    /// The access-token lifecycle of subscriptions (see [`Reauthorization`]).
    pub fn reauthorization(mut self, reauthorization: Reauthorization) -> Self {
        self.config.reauthorization = reauthorization;
        self
    }

    /// How long subscriptions' access tokens last (Graph: about an hour);
    /// after it, delivery pauses until the app reauthorizes.
    pub fn access_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.reauthorization.token_lifetime = lifetime;
        self
    }

    /// Accepts `http://` notification URLs on any host.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.config.allow_http = allow;
        self
    }

    /// Delivers `EventGrid:` subscriptions' notifications to this webhook,
    /// as Event Grid does for an event subscription on the partner topic:
    /// a CloudEvents `OPTIONS` handshake before each POST, then batches of
    /// CloudEvents (`application/cloudevents-batch+json`).
    pub fn event_grid_endpoint(mut self, url: url::Url) -> Self {
        self.config.event_grid_endpoint = Some(url);
        self
    }

    /// Treats this drive item id as a file.
    pub fn drive_file(mut self, item_id: impl Into<String>) -> Self {
        self.config.drive_files.push(item_id.into());
        self
    }

    /// A user (id or principal name) without a Copilot licence.
    pub fn copilot_unlicensed_user(mut self, user: impl Into<String>) -> Self {
        self.config.copilot_unlicensed_users.push(user.into());
        self
    }

    /// Enforces `limit` instead of the catalog's number for every quota of
    /// `scope` (see [`catalog::quotas`](crate::catalog::quotas)).
    pub fn quota_limit(mut self, scope: crate::catalog::QuotaScope, limit: u32) -> Self {
        self.config.quota_limits.retain(|(s, _)| *s != scope);
        self.config.quota_limits.push((scope, limit));
        self
    }

    /// How long Outlook, Teams and drive delta tokens stay usable (emulated time).
    pub fn delta_token_lifetime(mut self, lifetime: Duration) -> Self {
        self.config.delta_token_lifetime = lifetime;
        self
    }

    /// Serves HTTPS only, with a server certificate for `127.0.0.1`,
    /// `localhost` and `::1` signed at each start by a local CA kept in
    /// `dir` (`ca.pem`, and `ca-key.pem` with mode 0600): made on first use,
    /// reused after, so a machine trusts it once. Deliveries trust the CA
    /// besides the system's roots.
    pub fn https(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.https = Some(dir.into());
        self
    }

    /// The throttling limits of `/subscriptions` (default: Graph's, see
    /// [`ApiLimits`]); e.g. two writes a second, to see a client's `429`
    /// handling at work.
    pub fn api_limits(mut self, limits: ApiLimits) -> Self {
        self.config.api_limits = limits;
        self
    }

    /// Whether the tenant has Copilot licences (default: yes).
    pub fn copilot_tenant_licensed(mut self, licensed: bool) -> Self {
        self.config.copilot_tenant_licensed = licensed;
        self
    }

    /// Starts the emulator on 127.0.0.1 with a free port.
    ///
    /// # Errors
    ///
    /// I/O errors binding the port; OpenSSL errors generating the signing key.
    pub async fn start(self) -> io::Result<Emulator> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        self.start_on(listener)
    }

    /// Starts the emulator on a listener of the caller's.
    ///
    /// # Errors
    ///
    /// I/O errors reading the listener's address; OpenSSL errors generating
    /// the signing key; the HTTP client failing to initialise; with
    /// [`https`](Self::https), a CA file that cannot be read or used (the
    /// error names it) or the directory not writable.
    pub fn start_on(self, listener: TcpListener) -> io::Result<Emulator> {
        let addr = listener.local_addr()?;
        let identity = Identity::generate(self.config.token_version).map_err(io::Error::other)?;
        let tls = match &self.config.https {
            Some(dir) => Some(tls::Tls::load(dir, addr)?),
            None => None,
        };
        let mut client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "msgraph-webhooks-emulator/",
                env!("CARGO_PKG_VERSION")
            ));
        if let Some(tls) = &tls {
            // Besides the system's roots: receivers with a certificate of
            // this CA (Emulator::issue_server_certificate) pass the handshake.
            let ca = reqwest::Certificate::from_pem(tls.ca.pem()).map_err(io::Error::other)?;
            client = client.add_root_certificate(ca);
        }
        let client = client.build().map_err(io::Error::other)?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (shutdown, _) = watch::channel(false);
        let core = Arc::new(Core {
            clock: Clock::new(self.config.time_scale),
            config: self.config,
            identity,
            store: Store::default(),
            engine: Engine::default(),
            log: DeliveryLog::default(),
            resources: Resources::default(),
            delta: DeltaState::default(),
            rate: rate::Limiter::default(),
            client,
            base_url: format!("{scheme}://{addr}"),
            scheme,
            shutdown,
            changed: tokio::sync::Notify::new(),
            tasks: Mutex::new(JoinSet::new()),
        });
        core.spawn(lifecycle::housekeeping(core.clone()));
        let router = api::router(core.clone());
        let mut stopped = core.shutdown.subscribe();
        let (acceptor, ca) = match tls {
            Some(tls) => (Some(tls.acceptor), Some(tls.ca)),
            None => (None, None),
        };
        let server = match acceptor {
            Some(acceptor) => tokio::spawn(tls::serve(listener, acceptor, router, stopped)),
            None => tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    })
                    .await
            }),
        };
        tracing::info!(local = %addr, url = %core.base_url, "listening");
        Ok(Emulator {
            core,
            addr,
            server: Some(server),
            ca,
        })
    }

    /// Runs the emulator on `listener` until `shutdown` completes: the
    /// `msgraph-webhooks emulate` command.
    ///
    /// # Errors
    ///
    /// As [`start_on`](Self::start_on).
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let emulator = self.start_on(listener)?;
        shutdown.await;
        emulator.shutdown().await;
        Ok(())
    }
}
