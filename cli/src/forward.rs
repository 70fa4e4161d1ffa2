//! `--forward`, shared by `listen` and `work`: where events go instead of
//! standard output.

use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::forward::http::SigningSecret;
use msgraph_webhooks::forward::{self, Forward, RouteSpec, SinkOptions};
use msgraph_webhooks::handler::{
    ChangeEvent, HandlerEvent, JsonLines, LifecycleEvent, ResyncEvent,
};
use msgraph_webhooks::{BoxError, Handler};

#[derive(Debug, clap::Args)]
pub(crate) struct ForwardArgs {
    /// Send every event to this target instead of printing it, as
    /// [kind=K[,K…]=>]URL: an http(s) URL gets it POSTed as JSON, signed
    /// per Standard Webhooks (with --forward-secret). Repeat (or separate
    /// with ';') for several targets; an event goes to every route that
    /// takes it, a route without kind= takes all. Kinds: change, lifecycle,
    /// resync, or a resource kind (message, chatMessage, …).
    #[arg(
        long = "forward",
        value_name = "[kind=K=>]URL",
        env = "MSGRAPH_WEBHOOKS_FORWARD",
        value_delimiter = ';'
    )]
    forward: Vec<RouteSpec>,

    /// The Standard Webhooks secret HTTP deliveries are signed with:
    /// whsec_ then base64 of at least 24 bytes (the receiver verifies with
    /// the same string).
    #[arg(
        long,
        value_name = "whsec_…",
        env = "MSGRAPH_WEBHOOKS_FORWARD_SECRET",
        hide_env_values = true
    )]
    forward_secret: Option<crate::rich::Secret>,

    /// Seconds a target has to confirm one event before the attempt counts
    /// as failed (and is retried).
    #[arg(
        long,
        default_value_t = 10.0,
        env = "MSGRAPH_WEBHOOKS_FORWARD_TIMEOUT_SECS"
    )]
    forward_timeout_secs: f64,
}

impl ForwardArgs {
    /// The handler: the targets with --forward, JSON lines on standard
    /// output without.
    ///
    /// # Errors
    ///
    /// A bad secret or timeout, or a target that cannot be set up.
    pub(crate) async fn output(&self) -> Result<Output, BoxError> {
        if self.forward.is_empty() {
            return Ok(Output::Print(JsonLines::stdout()));
        }
        let mut options = SinkOptions::default().timeout(
            Duration::try_from_secs_f64(self.forward_timeout_secs)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or("--forward-timeout-secs must be a positive number of seconds")?,
        );
        if let Some(secret) = &self.forward_secret {
            options = options.secret(
                SigningSecret::parse(secret.expose())
                    .map_err(|e| format!("--forward-secret: {e}"))?,
            );
        }
        let mut handler = Forward::new();
        for route in &self.forward {
            let signed = matches!(route.url().scheme(), "http" | "https");
            if signed && options.secret.is_none() {
                tracing::warn!(
                    "--forward {} without --forward-secret: deliveries are not signed",
                    route.url().scheme()
                );
            }
            let sink = forward::connect(route.url(), &options)
                .await
                .map_err(|e| format!("--forward: {e}"))?;
            handler = handler.route(route.clone(), Arc::<dyn forward::Sink>::from(sink));
        }
        tracing::info!(targets = ?handler.describe(), "forwarding events");
        Ok(Output::Forward(Arc::new(handler)))
    }
}

/// Where the CLI's events go.
#[derive(Clone, Debug)]
pub(crate) enum Output {
    /// JSON lines on standard output.
    Print(JsonLines),
    /// The --forward targets.
    Forward(Arc<Forward>),
}

impl Handler for Output {
    async fn on_change(&self, event: ChangeEvent) -> Result<(), BoxError> {
        match self {
            Self::Print(h) => h.on_change(event).await,
            Self::Forward(h) => h.on_change(event).await,
        }
    }

    async fn on_lifecycle(&self, event: LifecycleEvent) -> Result<(), BoxError> {
        match self {
            Self::Print(h) => h.on_lifecycle(event).await,
            Self::Forward(h) => h.on_lifecycle(event).await,
        }
    }

    async fn on_resync(&self, event: ResyncEvent) -> Result<(), BoxError> {
        match self {
            Self::Print(h) => h.on_resync(event).await,
            Self::Forward(h) => h.on_resync(event).await,
        }
    }

    async fn on_batch(&self, events: Vec<HandlerEvent>) -> Vec<Result<(), BoxError>> {
        match self {
            Self::Print(h) => h.on_batch(events).await,
            Self::Forward(h) => h.on_batch(events).await,
        }
    }
}
