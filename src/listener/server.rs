//! The standalone server: hyper over TCP, with limits so one slow or hostile
//! client cannot starve the others, `GET /healthz`, and a graceful shutdown
//! that drains.
//!
//! Each connection is watched ([`connections`](super::connections)): a
//! request has one deadline for its headers and body together; a connection
//! with no request in flight is closed after the idle deadline, whatever the
//! protocol (HTTP/2 PINGs keep nothing alive), and sooner if it has not sent
//! a complete request yet; at the connection cap the server sheds the oldest
//! connection that is not answering a complete request instead of stopping
//! `accept`.
//!
//! With [`ServerConfig::tls`] the server terminates TLS itself
//! ([`tls`](super::tls)); the handshake runs under the same first deadline
//! as a plain connection's first bytes, in a slot of the same table.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

use super::connections::{Conn, Connections, Refusal, Slot};
use super::handshake::{self, Handshake};
use super::tls::{Acceptor, TlsConfig};
use super::{RequestDeadline, WebhookService, sniff};
use crate::metrics::Metrics;

/// Connection-level limits and shutdown timing of the standalone server.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Open connections at most (default 1024). At the cap, a new connection
    /// takes the slot of the oldest one that is not answering a complete
    /// request (one that never sent a complete request goes first); only
    /// when every connection is answering one does the server wait.
    pub max_connections: usize,
    /// Open connections at most from one IP address. `None` (the default):
    /// half of [`max_connections`](Self::max_connections) for every address
    /// but loopback ones — a local ngrok agent or reverse proxy forwards
    /// everybody's connections from `127.0.0.1`; `Some(n)`: `n` for every
    /// address, loopback too; `Some(0)`: no limit. A peer at its limit
    /// gives up its own oldest idle connection for a new one, so a remote
    /// proxy is only ever refused when half the cap is busy answering it.
    pub max_connections_per_peer: Option<usize>,
    /// Time a client has to send a request's headers (HTTP/1.1), and to send
    /// its first bytes (default 10 s).
    pub header_read_timeout: Duration,
    /// Time a client has for a request's headers and body together, counted
    /// from the moment its connection was ready for it (default 10 s): the
    /// accept, or the previous answer. After it, `408`.
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed,
    /// HTTP/2 with a GOAWAY (default 10 s). One that has not sent a complete
    /// request is closed once [`header_read_timeout`](Self::header_read_timeout)
    /// has passed since its accept.
    pub idle_timeout: Duration,
    /// Largest HTTP/1.1 header block, in bytes (default 16 KiB).
    pub max_header_bytes: usize,
    /// Serve HTTP/2 beside HTTP/1.1 (default off: Graph and ngrok speak
    /// HTTP/1.1 to this port): with prior knowledge (h2c) on plain HTTP,
    /// and offered as `h2` by ALPN with [`tls`](Self::tls).
    pub http2: bool,
    /// Concurrent HTTP/2 streams per connection (default 64).
    pub max_concurrent_streams: u32,
    /// Largest HTTP/2 header list, in bytes (default 16 KiB).
    pub max_header_list_size: u32,
    /// HTTP/2 keep-alive ping interval; a peer that doesn't answer within
    /// the same time is disconnected (default 20 s).
    pub h2_keep_alive: Duration,
    /// How long shutdown waits for in-flight requests (default 10 s).
    pub drain_timeout: Duration,
    /// Terminate TLS with this certificate and key (default `None`: plain
    /// HTTP, for a proxy or tunnel in front). The handshake must complete,
    /// and the first request bytes arrive, within
    /// [`header_read_timeout`](Self::header_read_timeout) of the accept;
    /// with [`http2`](Self::http2) on, `h2` is offered by ALPN.
    pub tls: Option<TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_peer: None,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            http2: false,
            max_concurrent_streams: 64,
            max_header_list_size: 16 * 1024,
            h2_keep_alive: Duration::from_secs(20),
            drain_timeout: Duration::from_secs(10),
            tls: None,
        }
    }
}

impl ServerConfig {
    /// The per-peer limit, and whether loopback peers are exempt from it.
    fn per_peer(&self) -> (usize, bool) {
        match self.max_connections_per_peer {
            Some(n) => (n, false),
            None => (self.max_connections / 2, true),
        }
    }
}

/// The accept queue [`bind`] asks the kernel for (capped by its own limit,
/// `net.core.somaxconn` on Linux).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for [`serve`] with a deep accept queue.
///
/// `TcpListener::bind` asks for std's 128: under a flood of connections
/// that queue fills at once, and the kernel then drops the SYNs of Graph's
/// connections too, which wait out seconds of retransmission before the
/// server even sees them. With room for thousands, a delivery waits behind
/// the flood only as long as the server takes to shed it.
///
/// # Errors
///
/// The socket's I/O errors (address in use, no permission, …).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// After a connection is told to close for idleness, how long it has to
/// flush its GOAWAY (or last answer) before it is cut.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Serves the endpoint on `listener` until `shutdown` completes, then stops
/// accepting, lets in-flight requests finish (up to
/// [`ServerConfig::drain_timeout`]) and returns.
///
/// Besides the endpoint on every path, answers `GET /healthz` (`200 ok`).
/// A validation handshake wins over it. Metrics are not served here: see
/// [`admin`](crate::admin).
///
/// # Errors
///
/// Only if reading the listener's local address fails, or OpenSSL refuses
/// the [`tls`](ServerConfig::tls) pair; accept errors are logged and
/// retried with backoff.
pub async fn serve(
    listener: TcpListener,
    service: WebhookService,
    config: &ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let metrics = service.metrics().clone();
    let endpoint = move |request: Request<Tracked>| {
        let service = service.clone();
        async move { route(&service, request).await }
    };
    let tls = if config.tls.is_some() { "on" } else { "off" };
    tracing::info!(local = %listener.local_addr()?, tls = %tls, "listening");
    if let Some(tls) = &config.tls {
        tracing::info!(certificate = %tls.describe(), "serving TLS");
    }
    run(listener, endpoint, config, Some(metrics), shutdown).await
}

/// The server loop, for any service: accept, admit (shedding if it must),
/// watch each connection, drain on shutdown.
pub(crate) async fn run<S, F>(
    listener: TcpListener,
    service: S,
    config: &ServerConfig,
    metrics: Option<Arc<Metrics>>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()>
where
    S: Fn(Request<Tracked>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let (per_peer, exempt_loopback) = config.per_peer();
    let connections = Connections::new(config.max_connections, per_peer, exempt_loopback);
    // Tells every connection that shutdown began.
    let (closing, closed) = watch::channel(false);
    // The watcher stops with this loop, when `_watching` is dropped.
    let (tls, _watching) = match &config.tls {
        Some(tls) => {
            let (acceptor, watching) = Acceptor::start(tls, config.http2)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            (Some(acceptor), Some(watching))
        }
        None => (None, None),
    };
    let serving = Serving {
        tls,
        builder: Arc::new(builder(config)),
        service,
        timeouts: Timeouts::of(config),
        metrics: metrics.clone(),
        closed,
    };
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(10);
    'accept: loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
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
        let slot = loop {
            let freed = connections.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match connections.admit(peer.ip()) {
                Ok(admitted) => {
                    if let (Some(reason), Some(metrics)) = (admitted.shed, &metrics) {
                        metrics.connection_closed(reason.as_str());
                    }
                    break admitted.slot;
                }
                Err(Refusal::PeerFull) => {
                    if let Some(metrics) = &metrics {
                        metrics.connection_closed("refused_peer");
                    }
                    tracing::debug!(%peer, "peer at its connection limit; closing");
                    continue 'accept;
                }
                // Every slot is busy, or too new to shed: wait.
                Err(Refusal::Full { retry_at }) => {
                    let retry = async {
                        match retry_at {
                            Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        () = freed => {}
                        () = retry => {}
                        () = &mut shutdown => break 'accept,
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(drive(stream, peer, slot, serving.clone()));
    }
    drop(listener);
    let _ = closing.send(true);
    tracing::info!(
        connections = connections.len(),
        "shutting down; draining connections"
    );
    let drained = tokio::time::timeout(config.drain_timeout, async {
        loop {
            let freed = connections.freed();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if connections.len() == 0 {
                break;
            }
            freed.await;
        }
    });
    if drained.await.is_err() {
        tracing::warn!(timeout = ?config.drain_timeout, "connections did not drain in time");
    }
    Ok(())
}

fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
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
    if !config.http2 {
        builder = builder.http1_only();
    }
    builder
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    first: Duration,
    request: Duration,
    idle: Duration,
    drain: Duration,
}

impl Timeouts {
    fn of(config: &ServerConfig) -> Self {
        Self {
            first: config.header_read_timeout,
            request: config.request_timeout,
            idle: config.idle_timeout,
            drain: config.drain_timeout,
        }
    }
}

/// What every connection of one server shares.
#[derive(Clone)]
struct Serving<S> {
    /// The TLS acceptor, when the server terminates TLS.
    tls: Option<Arc<Acceptor>>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    service: S,
    timeouts: Timeouts,
    metrics: Option<Arc<Metrics>>,
    /// Turns true when shutdown begins.
    closed: watch::Receiver<bool>,
}

/// One connection, from its accept to its close: the TLS handshake if the
/// server terminates TLS, then HTTP.
async fn drive<S, F>(stream: TcpStream, peer: SocketAddr, slot: Slot, serving: Serving<S>)
where
    S: Fn(Request<Tracked>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    // The handshake and the first request bytes share one deadline.
    let first_until = Instant::now() + serving.timeouts.first;
    let Some(acceptor) = serving.tls.clone() else {
        return drive_http(stream, peer, slot, serving, first_until).await;
    };
    let mut closed = serving.closed.clone();
    let conn = slot.conn().clone();
    let handshake = tokio::time::timeout_at(first_until, acceptor.accept(stream));
    let stream = tokio::select! {
        shook = handshake => match shook {
            Ok(Ok(stream)) => stream,
            // Plain HTTP, garbage, TLS 1.1: the client learns nothing but
            // OpenSSL's alert.
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                if let Some(metrics) = &serving.metrics {
                    metrics.connection_closed("tls_handshake");
                }
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "TLS handshake stalled; closing");
                return;
            }
        },
        () = conn.shed() => {
            tracing::debug!(%peer, "connection shed during its TLS handshake");
            return;
        }
        _ = closed.wait_for(|closing| *closing) => return,
    };
    drive_http(stream, peer, slot, serving, first_until).await;
}

/// HTTP on one connection (plain or decrypted), from its first bytes to
/// its close.
async fn drive_http<I, S, F>(
    stream: I,
    peer: SocketAddr,
    slot: Slot,
    serving: Serving<S>,
    first_until: Instant,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Fn(Request<Tracked>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let Serving {
        tls: _,
        builder,
        service,
        timeouts,
        metrics,
        mut closed,
    } = serving;
    let conn = slot.conn().clone();
    let first = tokio::select! {
        first = sniff::first_bytes(stream, first_until) => first,
        () = conn.shed() => None,
        _ = closed.wait_for(|closing| *closing) => None,
    };
    let Some(stream) = first else {
        tracing::debug!(%peer, "connection closed, stalled or shed before its first request");
        return;
    };
    let tracked = conn.clone();
    let hyper_service = service_fn(move |request: Request<Incoming>| {
        let deadline = tracked.request_started(timeouts.request);
        let ended = RequestEnded(tracked.clone());
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(RequestDeadline(deadline));
        let request = Request::from_parts(parts, Tracked::new(body, tracked.clone()));
        let answer = service(request);
        async move {
            let response = answer.await;
            drop(ended);
            Ok::<_, Infallible>(response)
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), hyper_service);
    tokio::pin!(connection);
    // When the connection, told to close, is cut if it has not closed by itself.
    let mut cut_at: Option<Instant> = None;
    let recheck = (timeouts.idle.min(timeouts.first) / 4).max(Duration::from_millis(10));
    loop {
        let wake = cut_at.unwrap_or_else(|| {
            conn.idle_deadline(timeouts.idle, timeouts.first)
                .map_or_else(|| Instant::now() + recheck, Instant::from_std)
        });
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            () = conn.shed() => {
                tracing::debug!(%peer, "connection shed for a new one");
                break;
            }
            _ = closed.wait_for(|closing| *closing), if cut_at.is_none() => {
                connection.as_mut().graceful_shutdown();
                cut_at = Some(Instant::now() + timeouts.drain);
            }
            () = tokio::time::sleep_until(wake) => {
                if cut_at.is_some() {
                    break;
                }
                let idle = conn.idle_deadline(timeouts.idle, timeouts.first);
                if idle.is_some_and(|at| Instant::from_std(at) <= Instant::now()) {
                    tracing::debug!(%peer, "closing an idle connection");
                    if let Some(metrics) = &metrics {
                        metrics.connection_closed("idle");
                    }
                    connection.as_mut().graceful_shutdown();
                    cut_at = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    }
    drop(slot);
}

/// Marks a request answered when the service's future completes or is dropped.
struct RequestEnded(Arc<Conn>);

impl Drop for RequestEnded {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A request body that tells its connection when it has arrived in full.
pub(crate) struct Tracked {
    inner: Incoming,
    conn: Option<Arc<Conn>>,
}

impl Tracked {
    fn new(inner: Incoming, conn: Arc<Conn>) -> Self {
        Self {
            inner,
            conn: Some(conn),
        }
    }

    fn done(&mut self, whole: bool) {
        if let Some(conn) = self.conn.take() {
            conn.body_done(whole);
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A body nobody read (a handshake, a GET) was complete if it was empty.
        let whole = self.inner.is_end_stream();
        self.done(whole);
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done(true),
            Poll::Ready(Some(Err(_))) => self.done(false),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn route(service: &WebhookService, request: Request<Tracked>) -> Response<Full<Bytes>> {
    let is_handshake = !matches!(
        handshake::validation_token(request.uri().query()),
        Handshake::Absent
    );
    if request.method() == Method::GET && !is_handshake && request.uri().path() == "/healthz" {
        return plain(StatusCode::OK, "ok\n".into());
    }
    service.handle(request).await
}

/// A `text/plain` answer.
pub(crate) fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
