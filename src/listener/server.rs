//! The standalone server: hyper over TCP (HTTP/1.1 and h2c), with limits so
//! one slow or hostile client cannot starve the others, `GET /healthz` and
//! `GET /metrics`, and a graceful shutdown that drains.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::WebhookService;
use super::handshake::{self, Handshake};
use super::sniff;

/// Connection-level limits and shutdown timing of the standalone server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Open connections at most (default 1024). At the cap the server stops
    /// accepting until one closes.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and the longest an idle
    /// HTTP/1.1 keep-alive connection is kept (default 10 s).
    pub header_read_timeout: Duration,
    /// Largest HTTP/1.1 header block, in bytes (default 16 KiB).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection (default 64).
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 header list, in bytes (default 16 KiB).
    pub max_header_list_size: u32,
    /// HTTP/2 keep-alive ping interval; a peer that doesn't answer within
    /// the same time is disconnected (default 20 s).
    pub h2_keep_alive: Duration,
    /// How long shutdown waits for in-flight requests (default 10 s).
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_concurrent_streams: 64,
            max_header_list_size: 16 * 1024,
            h2_keep_alive: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (up to
/// [`ServerConfig::drain_timeout`]) and returns.
///
/// Besides the endpoint on every path, answers `GET /healthz` (`200 ok`) and
/// `GET /metrics` (Prometheus text). A validation handshake wins over both.
///
/// # Errors
///
/// Only if reading the listener's local address fails; accept errors are
/// logged and retried with backoff.
pub async fn serve(
    listener: TcpListener,
    service: WebhookService,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(config.max_header_list_size)
        .max_pending_accept_reset_streams(20)
        .keep_alive_interval(config.h2_keep_alive)
        .keep_alive_timeout(config.h2_keep_alive);
    let permits = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let hyper_service = service_fn(move |request: Request<Incoming>| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(route(&service, request).await) }
    });
    tracing::info!(%local, "listening");

    // Connections still sending their first bytes are not yet watched by
    // `graceful`; this tells them to give up when shutdown begins.
    let (closing, closed) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, ?backoff, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        backoff = Duration::from_millis(10);
        let _ = stream.set_nodelay(true);
        let builder = builder.clone();
        let hyper_service = hyper_service.clone();
        let watcher = graceful.watcher();
        let header_read_timeout = config.header_read_timeout;
        let mut closed = closed.clone();
        tokio::spawn(async move {
            let first = tokio::select! {
                first = sniff::first_bytes(stream, header_read_timeout) => first,
                _ = closed.wait_for(|closing| *closing) => None,
            };
            let Some(stream) = first else {
                tracing::debug!("connection closed or stalled before its first request");
                return;
            };
            let connection = builder.serve_connection(TokioIo::new(stream), hyper_service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = closing.send(true);
    tracing::info!(
        connections = graceful.count(),
        "shutting down; draining connections"
    );
    if tokio::time::timeout(config.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(timeout = ?config.drain_timeout, "connections did not drain in time");
    }
    Ok(())
}

async fn route(service: &WebhookService, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let is_handshake = !matches!(
        handshake::validation_token(request.uri().query()),
        Handshake::Absent
    );
    if request.method() == Method::GET && !is_handshake {
        match request.uri().path() {
            "/healthz" => return plain(StatusCode::OK, "ok\n".into()),
            "/metrics" => {
                let stats = match service.shared.inbox.stats().await {
                    Ok(stats) => Some(stats),
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox stats unavailable");
                        None
                    }
                };
                let text = service.shared.metrics.render(stats);
                let mut response = plain(StatusCode::OK, text);
                response.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                return response;
            }
            _ => {}
        }
    }
    service.handle(request).await
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
