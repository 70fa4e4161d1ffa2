//! HTTPS for the emulator: a local CA kept in a directory and reused across
//! runs, a server certificate it signs at each start, and the TLS server.

use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{AlpnError, Ssl, SslAcceptor, SslMethod, SslVersion, select_next_proto};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Name, X509NameBuilder};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_openssl::SslStream;
use tower_service::Service as _;
use zeroize::Zeroizing;

/// The CA certificate's file name in the TLS directory: what clients trust.
pub(crate) const CA_FILE: &str = "ca.pem";
/// The CA private key's file name in the TLS directory (mode 0600).
pub(crate) const CA_KEY_FILE: &str = "ca-key.pem";

/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time open connections have to finish once the emulator stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The CA's lifetime: ten years, so a machine trusts it once.
const CA_DAYS: u32 = 3650;
/// The server certificate's lifetime (it is made anew at each start).
const SERVER_DAYS: u32 = 397;

/// The acceptor with this start's server certificate, and the CA.
pub(crate) struct Tls {
    pub(crate) acceptor: Arc<SslAcceptor>,
    pub(crate) ca_pem: Vec<u8>,
    pub(crate) ca_path: PathBuf,
}

impl Tls {
    /// Loads the CA in `dir` (creating it when neither file is there) and
    /// signs a server certificate for `127.0.0.1`, `localhost`, `::1` and
    /// the bound address.
    pub(crate) fn load(dir: &Path, bound: SocketAddr) -> io::Result<Self> {
        let (ca, ca_key) = local_ca(dir)?;
        let (cert, key) = server_certificate(&ca, &ca_key, bound.ip()).map_err(openssl_error)?;
        let acceptor = acceptor(&cert, &key).map_err(openssl_error)?;
        Ok(Self {
            acceptor: Arc::new(acceptor),
            ca_pem: ca.to_pem().map_err(openssl_error)?,
            ca_path: dir.join(CA_FILE),
        })
    }
}

fn openssl_error(e: ErrorStack) -> io::Error {
    io::Error::other(format!("TLS set-up failed: {e}"))
}

fn file_error(path: &Path, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

/// The CA of `dir`: reused when both files are there and valid, made when
/// neither is; anything else is an error naming the file.
fn local_ca(dir: &Path) -> io::Result<(X509, PKey<Private>)> {
    let cert_path = dir.join(CA_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    match (cert_path.try_exists()?, key_path.try_exists()?) {
        (true, true) => {
            let cert_pem = fs::read(&cert_path)
                .map_err(|e| file_error(&cert_path, format!("cannot read: {e}")))?;
            let key_pem = Zeroizing::new(
                fs::read(&key_path)
                    .map_err(|e| file_error(&key_path, format!("cannot read: {e}")))?,
            );
            let cert = X509::from_pem(&cert_pem)
                .map_err(|e| file_error(&cert_path, format!("not a PEM certificate: {e}")))?;
            let key = PKey::private_key_from_pem(&key_pem)
                .map_err(|e| file_error(&key_path, format!("not a PEM private key: {e}")))?;
            let matches = cert
                .public_key()
                .map(|public| public.public_eq(&key))
                .unwrap_or(false);
            if !matches {
                return Err(file_error(
                    &key_path,
                    format!(
                        "not the key of {}: remove both to make a new CA",
                        cert_path.display()
                    ),
                ));
            }
            if current(&cert).map_err(openssl_error)? {
                return Ok((cert, key));
            }
            tracing::warn!(ca = %cert_path.display(), "the local CA expired: making a new one, which must be trusted again");
            create_ca(dir, &cert_path, &key_path)
        }
        (false, false) => create_ca(dir, &cert_path, &key_path),
        (true, false) => Err(file_error(
            &key_path,
            format!(
                "missing beside {}: restore it, or remove both to make a new CA",
                cert_path.display()
            ),
        )),
        (false, true) => Err(file_error(
            &cert_path,
            format!(
                "missing beside {}: restore it, or remove both to make a new CA",
                key_path.display()
            ),
        )),
    }
}

/// Whether `cert` is valid now and for at least another day.
fn current(cert: &X509) -> Result<bool, ErrorStack> {
    let now = Asn1Time::days_from_now(0)?;
    let tomorrow = Asn1Time::days_from_now(1)?;
    Ok(cert.not_before() <= now && cert.not_after() > tomorrow)
}

fn name(common_name: &str) -> Result<X509Name, ErrorStack> {
    let mut name = X509NameBuilder::new()?;
    name.append_entry_by_text("O", "msgraph-webhooks")?;
    name.append_entry_by_text("CN", common_name)?;
    Ok(name.build())
}

fn serial(builder: &mut openssl::x509::X509Builder) -> Result<(), ErrorStack> {
    let mut serial = BigNum::new()?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false)?;
    let serial = serial.to_asn1_integer()?;
    builder.set_serial_number(&serial)
}

/// An hour ago, so clocks a little behind still accept the certificate.
fn an_hour_ago() -> Result<Asn1Time, ErrorStack> {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Asn1Time::from_unix(now - 3600)
}

fn create_ca(dir: &Path, cert_path: &Path, key_path: &Path) -> io::Result<(X509, PKey<Private>)> {
    let (cert, key) = build_ca().map_err(openssl_error)?;
    fs::create_dir_all(dir).map_err(|e| file_error(dir, format!("cannot create: {e}")))?;
    let key_pem = Zeroizing::new(key.private_key_to_pem_pkcs8().map_err(openssl_error)?);
    write_atomically(key_path, &key_pem)?;
    write_atomically(cert_path, &cert.to_pem().map_err(openssl_error)?)?;
    tracing::info!(ca = %cert_path.display(), "made a local CA");
    Ok((cert, key))
}

fn build_ca() -> Result<(X509, PKey<Private>), ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let name = name("msgraph-webhooks emulator local CA")?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    serial(&mut builder)?;
    builder.set_subject_name(&name)?;
    builder.set_issuer_name(&name)?;
    builder.set_pubkey(&key)?;
    let (not_before, not_after) = (an_hour_ago()?, Asn1Time::days_from_now(CA_DAYS)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .key_cert_sign()
            .crl_sign()
            .digital_signature()
            .build()?,
    )?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(None, None))?;
    builder.append_extension(ski)?;
    builder.sign(&key, MessageDigest::sha256())?;
    Ok((builder.build(), key))
}

/// Writes `bytes` to `path` through a temporary file (mode 0600) renamed
/// over it, so a reader never sees half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{file_name}.{}.tmp", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = options.open(&temporary).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let renamed = written.and_then(|()| fs::rename(&temporary, path));
    if let Err(e) = renamed {
        let _ = fs::remove_file(&temporary);
        return Err(file_error(path, format!("cannot write: {e}")));
    }
    Ok(())
}

/// A server certificate signed by the CA for the loopback names and the
/// bound address (when it is a specific one).
fn server_certificate(
    ca: &X509,
    ca_key: &PKey<Private>,
    bound: IpAddr,
) -> Result<(X509, PKey<Private>), ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    serial(&mut builder)?;
    let subject = name("localhost")?;
    builder.set_subject_name(&subject)?;
    builder.set_issuer_name(ca.subject_name())?;
    builder.set_pubkey(&key)?;
    let (not_before, not_after) = (an_hour_ago()?, Asn1Time::days_from_now(SERVER_DAYS)?);
    builder.set_not_before(&not_before)?;
    builder.set_not_after(&not_after)?;
    builder.append_extension(BasicConstraints::new().critical().build()?)?;
    builder.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .key_encipherment()
            .build()?,
    )?;
    builder.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
    let mut ips = vec![
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    if !bound.is_unspecified() && !ips.contains(&bound) {
        ips.push(bound);
    }
    let mut san = SubjectAlternativeName::new();
    san.dns("localhost");
    for ip in &ips {
        san.ip(&ip.to_string());
    }
    let san = san.build(&builder.x509v3_context(Some(ca), None))?;
    builder.append_extension(san)?;
    let ski = SubjectKeyIdentifier::new().build(&builder.x509v3_context(Some(ca), None))?;
    builder.append_extension(ski)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&builder.x509v3_context(Some(ca), None))?;
    builder.append_extension(aki)?;
    builder.sign(ca_key, MessageDigest::sha256())?;
    Ok((builder.build(), key))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_reused_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let first = Tls::load(dir.path(), addr).unwrap();
        let second = Tls::load(dir.path(), addr).unwrap();
        assert_eq!(first.ca_pem, second.ca_pem);
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), first.ca_pem);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(dir.path().join(CA_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }

        fs::write(dir.path().join(CA_FILE), b"garbage").unwrap();
        let error = Tls::load(dir.path(), addr).err().unwrap().to_string();
        assert!(error.contains(CA_FILE), "{error}");
        fs::write(dir.path().join(CA_FILE), &first.ca_pem).unwrap();
        fs::write(
            dir.path().join(CA_KEY_FILE),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
        )
        .unwrap();
        let error = Tls::load(dir.path(), addr).err().unwrap().to_string();
        assert!(error.contains(CA_KEY_FILE), "{error}");
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let error = Tls::load(dir.path(), addr).err().unwrap().to_string();
        assert!(
            error.contains(CA_KEY_FILE) && error.contains("missing"),
            "{error}"
        );
    }
}
