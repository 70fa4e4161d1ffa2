//! The admin address: what operators look at, served apart from the
//! notification endpoint.
//!
//! Metrics say which items were refused and why (`unknown_subscription` or
//! `client_state_mismatch`, an item accepted or not): served where Graph's
//! callers reach them they would tell an attacker whether a guessed
//! subscription id or `clientState` was right. So the notification port
//! answers `/metrics` like any other unknown path, and [`AdminService`]
//! answers it here, on an address of its own (loopback by default in the
//! CLI).
//!
//! | path | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text: the [`Metrics`], with the inbox's depth and oldest age |
//! | `GET /healthz` | `200 ok` |
//! | `/inspector/…` | the [inspector](crate::inspector)'s page and API, when [`AdminService::inspector`] is set |
//!
//! ```no_run
//! use msgraph_webhooks::{ClientState, Receiver, handler_fn};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let receiver = Receiver::builder(handler_fn(|_event| async { Ok(()) }))
//!     .client_state(ClientState::new("a secret of my own"))
//!     .build()?;
//! let endpoint = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let admin = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! receiver
//!     .serve_with_admin(endpoint, Some(admin), &Default::default(), async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::net::TcpListener;

use crate::inspector::InspectorApi;
use crate::listener::{ServerConfig, Tracked, plain};
use crate::metrics::Metrics;
use crate::store::Inbox;

/// The admin endpoints as a `tower::Service`. Built by
/// [`Receiver::admin_service`](crate::Receiver::admin_service), or from
/// metrics and an inbox for a process that only runs workers.
#[derive(Clone)]
pub struct AdminService {
    metrics: Arc<Metrics>,
    inbox: Option<Arc<dyn Inbox>>,
    inspector: Option<InspectorApi>,
    token: Option<Arc<AdminToken>>,
}

/// A bearer token every admin request but `/healthz` must carry, compared
/// in constant time.
struct AdminToken(zeroize::Zeroizing<String>);

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("inbox", &self.inbox.is_some())
            .field("inspector", &self.inspector)
            .field("token", &self.token.is_some())
            .finish_non_exhaustive()
    }
}

impl AdminService {
    /// Serves these metrics, with the gauges of `inbox` when given.
    pub fn new(metrics: Arc<Metrics>, inbox: Option<Arc<dyn Inbox>>) -> Self {
        Self {
            metrics,
            inbox,
            inspector: None,
            token: None,
        }
    }

    /// Serves the [inspector](crate::inspector) page and API under `/inspector/`.
    pub fn inspector(mut self, api: InspectorApi) -> Self {
        self.inspector = Some(api);
        self
    }

    /// Requires `Authorization: Bearer TOKEN` on every path but `/healthz`
    /// (`401` otherwise). The inspector's page itself is static and loads
    /// without it; it reads the token from its URL's fragment
    /// (`/inspector/#token=TOKEN`), which browsers never send.
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(Arc::new(AdminToken(zeroize::Zeroizing::new(token.into()))));
        self
    }

    fn authenticated(&self, headers: &http::HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return false;
        };
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, value)| value.trim());
        given.is_some_and(|given| {
            subtle::ConstantTimeEq::ct_eq(given.as_bytes(), token.0.as_bytes()).into()
        })
    }

    /// Answers one request.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>> {
        let path = request.uri().path();
        let authenticated = self.authenticated(request.headers());
        // The health check and the page's static files need no token.
        let public = path == "/healthz"
            || (path.starts_with("/inspector") && !path.starts_with("/inspector/api/"));
        if self.token.is_some() && !authenticated && !public {
            let mut response = status(StatusCode::UNAUTHORIZED);
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        if let Some(api) = &self.inspector
            && let Some(response) = api
                .handle(
                    request.method(),
                    request.uri(),
                    request.headers(),
                    self.inbox.as_ref(),
                    &self.metrics,
                    authenticated,
                )
                .await
        {
            return response;
        }
        if request.method() != Method::GET {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        match request.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok\n".into()),
            "/metrics" => {
                let stats = match &self.inbox {
                    Some(inbox) => match inbox.stats().await {
                        Ok(stats) => Some(stats),
                        Err(e) => {
                            tracing::warn!(error = %e, "inbox stats unavailable");
                            None
                        }
                    },
                    None => None,
                };
                let mut response = plain(StatusCode::OK, self.metrics.render(stats));
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => status(StatusCode::NOT_FOUND),
        }
    }
}

fn status(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

impl<B: Send + 'static> tower_service::Service<Request<B>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.handle(request).await) })
    }
}

/// Serves `admin` on `listener` until `shutdown` completes. Connections get
/// the same deadlines as the endpoint's, with a cap of 64.
///
/// # Errors
///
/// Only if reading the listener's local address fails.
pub async fn serve(
    listener: TcpListener,
    admin: AdminService,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let config = ServerConfig {
        max_connections: 64,
        max_connections_per_peer: Some(0),
        ..ServerConfig::default()
    };
    tracing::info!(admin = %listener.local_addr()?, "admin address ready");
    let inspector = admin.inspector.as_ref().map(|api| api.inspector().clone());
    let service = move |request: Request<Tracked>| {
        let admin = admin.clone();
        async move { admin.handle(request).await }
    };
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let quiet = async {
        if let Some(inspector) = &inspector {
            inspector.log_quiet(until_stopped).await;
        }
    };
    let closing = inspector.clone();
    let shutdown = async move {
        shutdown.await;
        // Pending long polls answer now, so the drain doesn't wait them out.
        if let Some(inspector) = closing {
            inspector.close();
        }
    };
    let served = async {
        let served = crate::listener::run(listener, service, &config, None, shutdown).await;
        let _ = stop.send(true);
        served
    };
    let (served, ()) = tokio::join!(served, quiet);
    served
}
