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
    pub(crate) ca: LocalCa,
}

impl Tls {
    /// Loads the CA in `dir` (creating it when neither file is there) and
    /// signs a server certificate for `127.0.0.1`, `localhost`, `::1` and
    /// the bound address.
    pub(crate) fn load(dir: &Path, bound: SocketAddr) -> io::Result<Self> {
        let (cert, key) = local_ca(dir)?;
        let ca = LocalCa {
            pem: cert.to_pem().map_err(openssl_error)?,
            cert,
            key,
            dir: dir.to_owned(),
            path: dir.join(CA_FILE),
        };
        let mut names = Names::loopback();
        let ip = bound.ip();
        if !ip.is_unspecified() && !names.ips.contains(&ip) {
            names.ips.push(ip);
        }
        let (cert, key) = ca.sign(&names).map_err(openssl_error)?;
        let acceptor = acceptor(&cert, &key).map_err(openssl_error)?;
        Ok(Self {
            acceptor: Arc::new(acceptor),
            ca,
        })
    }
}

/// The receiver certificate's file name in the TLS directory.
pub(crate) const RECEIVER_CERT_FILE: &str = "receiver.pem";
/// The receiver key's file name in the TLS directory (mode 0600).
pub(crate) const RECEIVER_KEY_FILE: &str = "receiver-key.pem";

/// The local CA: its certificate, the key it signs with, its directory.
pub(crate) struct LocalCa {
    cert: X509,
    key: PKey<Private>,
    pem: Vec<u8>,
    dir: PathBuf,
    /// `DIR/ca.pem`.
    path: PathBuf,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// The CA certificate, PEM.
    pub(crate) fn pem(&self) -> &[u8] {
        &self.pem
    }

    /// `DIR/ca.pem`.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// A server certificate and key for `names` (IP addresses or DNS
    /// names; none: `127.0.0.1`, `localhost`, `::1`).
    pub(crate) fn issue(&self, names: &[&str]) -> io::Result<ServerCertificate> {
        let names = Names::parse(names)?;
        let (cert, key) = self.sign(&names).map_err(openssl_error)?;
        Ok(ServerCertificate {
            cert_pem: cert.to_pem().map_err(openssl_error)?,
            key_pem: Zeroizing::new(key.private_key_to_pem_pkcs8().map_err(openssl_error)?),
        })
    }

    /// `DIR/receiver.pem` and `DIR/receiver-key.pem`: a loopback server
    /// certificate of this CA, kept while it is valid for another day.
    pub(crate) fn receiver_files(&self) -> io::Result<(PathBuf, PathBuf)> {
        let cert_path = self.dir.join(RECEIVER_CERT_FILE);
        let key_path = self.dir.join(RECEIVER_KEY_FILE);
        if !self.holds_receiver_pair(&cert_path, &key_path) {
            self.issue(&[])?.write(&cert_path, &key_path)?;
            tracing::info!(cert = %cert_path.display(), "made a receiver certificate signed by the local CA");
        }
        Ok((cert_path, key_path))
    }

    /// Whether the two files are a current certificate of this CA and its key.
    fn holds_receiver_pair(&self, cert_path: &Path, key_path: &Path) -> bool {
        let (Ok(cert_pem), Ok(key_pem)) = (fs::read(cert_path), fs::read(key_path)) else {
            return false;
        };
        let key_pem = Zeroizing::new(key_pem);
        let (Ok(cert), Ok(key)) = (
            X509::from_pem(&cert_pem),
            PKey::private_key_from_pem(&key_pem),
        ) else {
            return false;
        };
        let signed = self
            .cert
            .public_key()
            .and_then(|ca| cert.verify(&ca))
            .unwrap_or(false);
        let paired = cert
            .public_key()
            .map(|public| public.public_eq(&key))
            .unwrap_or(false);
        signed && paired && current(&cert).unwrap_or(false)
    }

    /// A server certificate signed by this CA for `names`.
    fn sign(&self, names: &Names) -> Result<(X509, PKey<Private>), ErrorStack> {
        server_certificate(&self.cert, &self.key, names)
    }
}

/// A server certificate signed by the emulator's local CA, and its private
/// key, both PEM: for a receiver (`listen --tls-cert/--tls-key`, or
/// [`TlsConfig`](crate::listener::TlsConfig)) the emulator's deliveries
/// trust. Made by [`Emulator::issue_server_certificate`](super::Emulator::issue_server_certificate).
/// `Debug` leaves the key out.
#[derive(Clone)]
pub struct ServerCertificate {
    cert_pem: Vec<u8>,
    key_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for ServerCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCertificate")
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ServerCertificate {
    /// The certificate, PEM.
    pub fn certificate_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The private key (PKCS#8), PEM.
    pub fn private_key_pem(&self) -> &[u8] {
        &self.key_pem
    }

    /// Writes the certificate to `cert` and the key to `key`, each through
    /// a temporary file renamed over it, readable by the owner only.
    ///
    /// # Errors
    ///
    /// A file that cannot be written (the error names it).
    pub fn write(&self, cert: &Path, key: &Path) -> io::Result<()> {
        write_atomically(key, &self.key_pem)?;
        write_atomically(cert, &self.cert_pem)
    }
}

/// The names a server certificate is for.
struct Names {
    dns: Vec<String>,
    ips: Vec<IpAddr>,
}

impl Names {
    /// `localhost`, `127.0.0.1`, `::1`.
    fn loopback() -> Self {
        Self {
            dns: vec!["localhost".to_owned()],
            ips: vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ],
        }
    }

    /// IP addresses and DNS names (letters, digits, `-`, `.`, a leading
    /// `*.`); none: [`loopback`](Self::loopback).
    fn parse(names: &[&str]) -> io::Result<Self> {
        if names.is_empty() {
            return Ok(Self::loopback());
        }
        let mut parsed = Self {
            dns: Vec::new(),
            ips: Vec::new(),
        };
        for name in names {
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = bare.parse::<IpAddr>() {
                parsed.ips.push(ip);
            } else if dns_name(name) {
                parsed.dns.push(name.to_ascii_lowercase());
            } else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{name:?} is neither an IP address nor a DNS name"),
                ));
            }
        }
        Ok(parsed)
    }
}

fn dns_name(name: &str) -> bool {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    !rest.is_empty()
        && name.len() <= 253
        && rest.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
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

/// A server certificate signed by the CA for `names`.
fn server_certificate(
    ca: &X509,
    ca_key: &PKey<Private>,
    names: &Names,
) -> Result<(X509, PKey<Private>), ErrorStack> {
    let key = PKey::from_rsa(Rsa::generate(2048)?)?;
    let mut builder = X509::builder()?;
    builder.set_version(2)?;
    serial(&mut builder)?;
    let common_name = names
        .dns
        .first()
        .cloned()
        .or_else(|| names.ips.first().map(ToString::to_string))
        .unwrap_or_else(|| "localhost".to_owned());
    let subject = name(&common_name)?;
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
    let mut san = SubjectAlternativeName::new();
    for dns in &names.dns {
        san.dns(dns);
    }
    for ip in &names.ips {
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
        assert_eq!(first.ca.pem(), second.ca.pem());
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), first.ca.pem());
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
        fs::write(dir.path().join(CA_FILE), first.ca.pem()).unwrap();
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

    fn san_of(pem: &[u8]) -> (Vec<String>, Vec<Vec<u8>>) {
        let cert = X509::from_pem(pem).unwrap();
        let names = cert.subject_alt_names().unwrap();
        let dns = names
            .iter()
            .filter_map(|n| n.dnsname().map(str::to_owned))
            .collect();
        let ips = names
            .iter()
            .filter_map(|n| n.ipaddress().map(<[u8]>::to_vec))
            .collect();
        (dns, ips)
    }

    #[test]
    fn issued_certificates_are_the_cas_for_the_names_asked() {
        let dir = tempfile::tempdir().unwrap();
        let tls = Tls::load(dir.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
        let ca = X509::from_pem(tls.ca.pem()).unwrap();

        let default = tls.ca.issue(&[]).unwrap();
        let cert = X509::from_pem(default.certificate_pem()).unwrap();
        assert!(cert.verify(&ca.public_key().unwrap()).unwrap());
        let key = PKey::private_key_from_pem(default.private_key_pem()).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
        let (dns, ips) = san_of(default.certificate_pem());
        assert_eq!(dns, ["localhost"]);
        assert_eq!(
            ips,
            [vec![127, 0, 0, 1], Ipv6Addr::LOCALHOST.octets().to_vec()]
        );
        assert!(!format!("{default:?}").contains("PRIVATE"));

        let named = tls
            .ca
            .issue(&["hooks.example.test", "10.0.0.7", "[::1]", "*.dev.test"])
            .unwrap();
        let (dns, ips) = san_of(named.certificate_pem());
        assert_eq!(dns, ["hooks.example.test", "*.dev.test"]);
        assert_eq!(
            ips,
            [vec![10, 0, 0, 7], Ipv6Addr::LOCALHOST.octets().to_vec()]
        );

        for hostile in ["", "a b", "-x.test", "x..test", "x/y", "*", "é.test"] {
            let error = tls.ca.issue(&[hostile]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{hostile:?}");
        }
    }

    #[test]
    fn receiver_files_are_kept_while_they_are_this_cas() {
        let dir = tempfile::tempdir().unwrap();
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let tls = Tls::load(dir.path(), addr).unwrap();
        let (cert, key) = tls.ca.receiver_files().unwrap();
        assert_eq!(cert, dir.path().join(RECEIVER_CERT_FILE));
        let first = fs::read(&cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        tls.ca.receiver_files().unwrap();
        assert_eq!(fs::read(&cert).unwrap(), first, "reused");

        // Another CA's pair, or a broken file, is replaced.
        let other = tempfile::tempdir().unwrap();
        let other = Tls::load(other.path(), addr).unwrap();
        other.ca.issue(&[]).unwrap().write(&cert, &key).unwrap();
        tls.ca.receiver_files().unwrap();
        let replaced = X509::from_pem(&fs::read(&cert).unwrap()).unwrap();
        let ca = X509::from_pem(tls.ca.pem()).unwrap();
        assert!(replaced.verify(&ca.public_key().unwrap()).unwrap());
        fs::write(&key, b"garbage").unwrap();
        tls.ca.receiver_files().unwrap();
        assert!(PKey::private_key_from_pem(&fs::read(&key).unwrap()).is_ok());
    }
}
