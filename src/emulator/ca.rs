//! The emulator's local CA, kept in a directory and reused across runs, and
//! the server certificates it signs: the emulator's own at each start, and
//! receivers' ([`ServerCertificate`]), which its deliveries then trust.

use std::fs;
use std::io::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Name, X509NameBuilder};
use zeroize::Zeroizing;

/// The CA certificate's file name in the TLS directory: what clients trust.
pub(crate) const CA_FILE: &str = "ca.pem";
/// The CA private key's file name in the TLS directory (mode 0600).
pub(crate) const CA_KEY_FILE: &str = "ca-key.pem";
/// The CA's lifetime: ten years, so a machine trusts it once.
const CA_DAYS: u32 = 3650;
/// The server certificate's lifetime (it is made anew at each start).
const SERVER_DAYS: u32 = 397;

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
    /// The CA in `dir`: reused when both files are there and valid, made
    /// when neither is; anything else is an error naming the file.
    pub(crate) fn load(dir: &Path) -> io::Result<Self> {
        let (cert, key) = local_ca(dir)?;
        Ok(Self {
            pem: cert.to_pem().map_err(openssl_error)?,
            cert,
            key,
            dir: dir.to_owned(),
            path: dir.join(CA_FILE),
        })
    }

    /// The emulator's own certificate: `127.0.0.1`, `localhost`, `::1`, and
    /// the bound address when it is a specific one.
    pub(crate) fn server_identity(&self, bound: IpAddr) -> io::Result<(X509, PKey<Private>)> {
        let mut names = Names::loopback();
        if !bound.is_unspecified() && !names.ips.contains(&bound) {
            names.ips.push(bound);
        }
        self.sign(&names).map_err(openssl_error)
    }

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
/// trust. Made by [`Emulator::issue_server_certificate`](super::Emulator::issue_server_certificate),
/// valid 397 days. `Debug` leaves the key out.
///
/// ```no_run
/// use msgraph_webhooks::emulator::Emulator;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let emulator = Emulator::builder().https(dir.path()).start().await?;
/// let receiver = emulator.issue_server_certificate(&[])?;
/// receiver.write(&dir.path().join("hook.pem"), &dir.path().join("hook-key.pem"))?;
/// // listen --tls-cert DIR/hook.pem --tls-key DIR/hook-key.pem: the
/// // emulator now delivers to https://127.0.0.1:PORT/…
/// # Ok(()) }
/// ```
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

pub(crate) fn openssl_error(e: ErrorStack) -> io::Error {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_reused_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCa::load(dir.path()).unwrap();
        let second = LocalCa::load(dir.path()).unwrap();
        assert_eq!(first.pem(), second.pem());
        assert_eq!(fs::read(dir.path().join(CA_FILE)).unwrap(), first.pem());
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
        let error = LocalCa::load(dir.path()).err().unwrap().to_string();
        assert!(error.contains(CA_FILE), "{error}");
        fs::write(dir.path().join(CA_FILE), first.pem()).unwrap();
        fs::write(
            dir.path().join(CA_KEY_FILE),
            b"-----BEGIN PRIVATE KEY-----\nAAAA\n",
        )
        .unwrap();
        let error = LocalCa::load(dir.path()).err().unwrap().to_string();
        assert!(error.contains(CA_KEY_FILE), "{error}");
        fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap();
        let error = LocalCa::load(dir.path()).err().unwrap().to_string();
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
        let ca = LocalCa::load(dir.path()).unwrap();
        let ca_cert = X509::from_pem(ca.pem()).unwrap();

        let default = ca.issue(&[]).unwrap();
        let cert = X509::from_pem(default.certificate_pem()).unwrap();
        assert!(cert.verify(&ca_cert.public_key().unwrap()).unwrap());
        let key = PKey::private_key_from_pem(default.private_key_pem()).unwrap();
        assert!(cert.public_key().unwrap().public_eq(&key));
        let (dns, ips) = san_of(default.certificate_pem());
        assert_eq!(dns, ["localhost"]);
        assert_eq!(
            ips,
            [vec![127, 0, 0, 1], Ipv6Addr::LOCALHOST.octets().to_vec()]
        );
        assert!(!format!("{default:?}").contains("PRIVATE"));

        let named = ca
            .issue(&["hooks.example.test", "10.0.0.7", "[::1]", "*.dev.test"])
            .unwrap();
        let (dns, ips) = san_of(named.certificate_pem());
        assert_eq!(dns, ["hooks.example.test", "*.dev.test"]);
        assert_eq!(
            ips,
            [vec![10, 0, 0, 7], Ipv6Addr::LOCALHOST.octets().to_vec()]
        );

        for hostile in ["", "a b", "-x.test", "x..test", "x/y", "*", "é.test"] {
            let error = ca.issue(&[hostile]).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{hostile:?}");
        }
    }

    #[test]
    fn receiver_files_are_kept_while_they_are_this_cas() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::load(dir.path()).unwrap();
        let (cert, key) = ca.receiver_files().unwrap();
        assert_eq!(cert, dir.path().join(RECEIVER_CERT_FILE));
        let first = fs::read(&cert).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        ca.receiver_files().unwrap();
        assert_eq!(fs::read(&cert).unwrap(), first, "reused");

        // Another CA's pair, or a broken file, is replaced.
        let other = tempfile::tempdir().unwrap();
        let other = LocalCa::load(other.path()).unwrap();
        other.issue(&[]).unwrap().write(&cert, &key).unwrap();
        ca.receiver_files().unwrap();
        let replaced = X509::from_pem(&fs::read(&cert).unwrap()).unwrap();
        let ca_cert = X509::from_pem(ca.pem()).unwrap();
        assert!(replaced.verify(&ca_cert.public_key().unwrap()).unwrap());
        fs::write(&key, b"garbage").unwrap();
        ca.receiver_files().unwrap();
        assert!(PKey::private_key_from_pem(&fs::read(&key).unwrap()).is_ok());
    }
}
