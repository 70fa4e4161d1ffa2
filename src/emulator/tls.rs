//! HTTPS for the emulator: the TLS server, with a certificate of the local
//! [CA](super::ca) made at each start.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslMethod, SslVersion, select_next_proto};
use openssl::x509::X509;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_openssl::SslStream;
use tower_service::Service as _;

use super::ca::{LocalCa, openssl_error};

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections have to finish once the emulator stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The acceptor with this start's server certificate, and the CA.
pub(crate) struct Tls {
    pub(crate) acceptor: Arc<SslAcceptor>,
    pub(crate) ca: LocalCa,
}

impl Tls {
    /// Loads the CA in `dir` (creating it when neither file is there) and
    /// signs a server certificate for `127.0.0.1`, `localhost`, `::1` and
    /// the bound address.
    pub(crate) fn load(dir: &Path, bound: SocketAddr) -> io::Result<Self> {
        let ca = LocalCa::load(dir)?;
        let (cert, key) = ca.server_identity(bound.ip())?;
        let acceptor = acceptor(&cert, &key).map_err(openssl_error)?;
        Ok(Self {
            acceptor: Arc::new(acceptor),
            ca,
        })
    }
}

/// TLS 1.2 and later, ALPN `h2` then `http/1.1`.
fn acceptor(cert: &X509, key: &PKey<Private>) -> Result<SslAcceptor, ErrorStack> {
    let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
    builder.set_min_proto_version(Some(SslVersion::TLS1_2))?;
    builder.set_private_key(key)?;
    builder.set_certificate(cert)?;
    builder.check_private_key()?;
    builder.set_alpn_select_callback(|_, offered| {
        select_next_proto(b"\x02h2\x08http/1.1", offered).ok_or(AlpnError::NOACK)
    });
    Ok(builder.build())
}

/// Serves `router` over TLS on `listener` until `stopped` turns true, then
/// gives open connections a few seconds to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    acceptor: Arc<SslAcceptor>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
        };
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((tcp, peer)) => {
                connections.spawn(connection(
                    tcp,
                    peer,
                    acceptor.clone(),
                    router.clone(),
                    stopped.clone(),
                ));
            }
            // Out of file descriptors and the like: wait, then go on.
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::debug!("connections still open at shutdown: closed");
    }
    Ok(())
}

/// One connection: the handshake (bounded), then HTTP/1.1 or HTTP/2.
async fn connection(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: Arc<SslAcceptor>,
    router: Router,
    mut stopped: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = match Ssl::new(acceptor.context()).and_then(|ssl| SslStream::new(ssl, tcp)) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "TLS set-up failed");
            return;
        }
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, Pin::new(&mut stream).accept()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    }
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        router.clone().call(request)
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // The timer gives HTTP/1 its header-read timeout.
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        served = conn.as_mut() => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            return;
        }
        _ = stopped.wait_for(|stop| *stop) => conn.as_mut().graceful_shutdown(),
    }
    let _ = conn.await;
}
