//! TLS for the standalone server: the certificate chain and key files,
//! loaded and checked; the acceptor new connections get, swapped when the
//! files change; the handshake itself.
//!
//! Graph only calls `https://` URLs. With a [`TlsConfig`] in
//! [`ServerConfig::tls`](super::ServerConfig::tls) the server terminates
//! TLS 1.2+ itself, so a receiver on its own VM needs no proxy in front.
//! Renewed files (a Let's Encrypt renewal, say) are picked up without a
//! restart: established connections keep the certificate they shook hands
//! with, new ones get the new one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use openssl::pkey::{PKey, Private};
use openssl::ssl::{self, AlpnError, Ssl, SslAcceptor, SslMethod, SslVersion};
use openssl::x509::{X509, X509Ref};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;
use zeroize::Zeroizing;

/// How often the files are checked for changes by default.
const DEFAULT_POLL: Duration = Duration::from_secs(5);

/// The server's certificate and key, from PEM files it watches.
///
/// Built by [`from_pem_files`](Self::from_pem_files), which loads and
/// checks the pair at once, so a typo fails at startup rather than at the
/// first connection. While the server runs it polls both files (their
/// modification time and size) every [`poll_interval`](Self::poll_interval);
/// when they change and the new pair loads and matches, new connections
/// get it. A pair that fails to load is logged at warn with the reason,
/// and the server keeps the one it has.
///
/// The server offers TLS 1.2 and 1.3 only, and by ALPN `http/1.1`, and `h2`
/// too when [`ServerConfig::http2`](super::ServerConfig::http2) is on.
///
/// # Examples
///
/// ```no_run
/// use msgraph_webhooks::listener::{ServerConfig, TlsConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = ServerConfig::default();
/// config.tls = Some(TlsConfig::from_pem_files(
///     "/etc/letsencrypt/live/hooks.example.com/fullchain.pem",
///     "/etc/letsencrypt/live/hooks.example.com/privkey.pem",
/// )?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    cert: PathBuf,
    key: PathBuf,
    poll: Duration,
    identity: Arc<Identity>,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("poll", &self.poll)
            .field("certificate", &self.identity.describe())
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    /// Loads the certificate chain (`cert`: the server's certificate first,
    /// then its intermediates) and the private key (`key`) from PEM files.
    ///
    /// # Errors
    ///
    /// When a file cannot be read, holds no certificate or key, or the key
    /// is not the certificate's.
    pub fn from_pem_files(
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Result<Self, TlsError> {
        let (cert, key) = (cert.into(), key.into());
        let identity = Arc::new(Identity::load(&cert, &key)?);
        // The pair must also make an acceptor: fail here, not at serve.
        identity.acceptor(true)?;
        Ok(Self {
            cert,
            key,
            poll: DEFAULT_POLL,
            identity,
        })
    }

    /// How often the server checks the files for changes (default 5 s).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll = every.max(Duration::from_millis(10));
        self
    }

    /// The loaded certificate in a line: subject, serial, expiry.
    pub fn describe(&self) -> String {
        self.identity.describe()
    }
}

/// Why a certificate and key pair could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate file holds no PEM certificate, or a broken one.
    Certificate(String),
    /// The key file holds no PEM private key, or a broken one.
    Key(String),
    /// The private key is not the one of the certificate.
    Mismatch,
    /// OpenSSL refused the pair (a key too weak, an unsupported algorithm).
    Setup(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, reason } => write!(f, "reading {}: {reason}", path.display()),
            TlsError::Certificate(e) => write!(f, "no usable PEM certificate: {e}"),
            TlsError::Key(e) => write!(f, "no usable PEM private key: {e}"),
            TlsError::Mismatch => f.write_str("the private key does not match the certificate"),
            TlsError::Setup(e) => write!(f, "setting up TLS: {e}"),
        }
    }
}

impl std::error::Error for TlsError {}

/// What the files held when they were loaded.
struct Identity {
    chain: Vec<X509>,
    key: PKey<Private>,
    stamp: Stamp,
}

impl Identity {
    fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        // Stamped before reading: a write landing in between shows as a
        // change at the next poll, and is loaded then.
        let stamp = Stamp::of(cert, key);
        let read = |path: &Path| {
            std::fs::read(path)
                .map(Zeroizing::new)
                .map_err(|e| TlsError::Read {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
        };
        let chain =
            X509::stack_from_pem(&read(cert)?).map_err(|e| TlsError::Certificate(e.to_string()))?;
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Certificate("the file holds none".into()))?;
        let key =
            PKey::private_key_from_pem(&read(key)?).map_err(|e| TlsError::Key(e.to_string()))?;
        let public = leaf
            .public_key()
            .map_err(|e| TlsError::Certificate(e.to_string()))?;
        if !public.public_eq(&key) {
            return Err(TlsError::Mismatch);
        }
        Ok(Self { chain, key, stamp })
    }

    fn leaf(&self) -> &X509Ref {
        // `load` refuses an empty chain.
        &self.chain[0]
    }

    fn describe(&self) -> String {
        CertSummary::of(self.leaf()).to_string()
    }

    /// An acceptor for this pair: TLS 1.2 at least, ALPN `h2` (if `http2`)
    /// and `http/1.1`.
    fn acceptor(&self, http2: bool) -> Result<SslAcceptor, TlsError> {
        let setup = |e: openssl::error::ErrorStack| TlsError::Setup(e.to_string());
        let mut builder =
            SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).map_err(setup)?;
        builder
            .set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(setup)?;
        builder.set_private_key(&self.key).map_err(setup)?;
        builder.set_certificate(self.leaf()).map_err(setup)?;
        for intermediate in &self.chain[1..] {
            builder
                .add_extra_chain_cert(intermediate.clone())
                .map_err(setup)?;
        }
        builder
            .check_private_key()
            .map_err(|_| TlsError::Mismatch)?;
        let offered: &'static [u8] = if http2 {
            b"\x02h2\x08http/1.1"
        } else {
            b"\x08http/1.1"
        };
        builder.set_alpn_select_callback(move |_, client| {
            // A client offering only protocols we don't speak gets no ALPN
            // answer (and HTTP/1.1 if it goes on).
            ssl::select_next_proto(offered, client).ok_or(AlpnError::NOACK)
        });
        Ok(builder.build())
    }
}

/// The modification time and size of both files; `None` for one that
/// cannot be read (mid-rename, say).
type FileStamp = Option<(SystemTime, u64)>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(FileStamp, FileStamp);

impl Stamp {
    fn of(cert: &Path, key: &Path) -> Self {
        let one = |path: &Path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        };
        Self(one(cert), one(key))
    }
}

/// The acceptor new connections get; the watcher swaps it.
pub(super) struct Acceptor {
    current: RwLock<Arc<SslAcceptor>>,
}

impl Acceptor {
    /// The acceptor for `config` and the task that keeps it current; the
    /// task ends when the returned guard is dropped.
    pub(super) fn start(
        config: &TlsConfig,
        http2: bool,
    ) -> Result<(Arc<Self>, Watching), TlsError> {
        let this = Arc::new(Self {
            current: RwLock::new(Arc::new(config.identity.acceptor(http2)?)),
        });
        let task = tokio::spawn(watch(config.clone(), http2, this.clone()));
        Ok((this, Watching(task)))
    }

    fn current(&self) -> Arc<SslAcceptor> {
        // A swap cannot panic halfway: a poisoned lock still holds a whole acceptor.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn swap(&self, acceptor: SslAcceptor) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(acceptor);
    }

    /// The TLS handshake on `stream`, with the acceptor of the moment. The
    /// caller bounds it in time.
    pub(super) async fn accept(&self, stream: TcpStream) -> Result<SslStream<TcpStream>, String> {
        let acceptor = self.current();
        let ssl = Ssl::new(acceptor.context()).map_err(|e| e.to_string())?;
        let mut stream = SslStream::new(ssl, stream).map_err(|e| e.to_string())?;
        Pin::new(&mut stream)
            .accept()
            .await
            .map_err(|e| e.to_string())?;
        Ok(stream)
    }
}

/// Stops the file watcher when dropped.
pub(super) struct Watching(tokio::task::JoinHandle<()>);

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls the files; loads and swaps in a pair that changed and checks out.
async fn watch(config: TlsConfig, http2: bool, acceptor: Arc<Acceptor>) {
    let mut seen = config.identity.stamp;
    let mut ticks = tokio::time::interval(config.poll);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        // Two small files every few seconds: not worth a blocking thread.
        let stamp = Stamp::of(&config.cert, &config.key);
        if stamp == seen {
            continue;
        }
        // Whatever the outcome, this version is not retried: the next
        // write (the key after the certificate, say) is.
        seen = stamp;
        let loaded = Identity::load(&config.cert, &config.key)
            .and_then(|identity| Ok((identity.acceptor(http2)?, identity)));
        match loaded {
            Ok((new, identity)) => {
                acceptor.swap(new);
                tracing::info!(
                    certificate = %identity.describe(),
                    "TLS certificate reloaded; new connections use it"
                );
            }
            Err(e) => tracing::warn!(
                error = %e,
                cert = %config.cert.display(),
                key = %config.key.display(),
                "TLS files changed but cannot be used; keeping the current certificate"
            ),
        }
    }
}

/// What a person needs to know about a certificate: who it names, until when.
#[derive(Debug)]
pub(crate) struct CertSummary {
    pub(crate) subject: String,
    pub(crate) names: Vec<String>,
    pub(crate) serial: String,
    pub(crate) not_after: String,
}

impl CertSummary {
    pub(crate) fn of(cert: &X509Ref) -> Self {
        let subject = cert
            .subject_name()
            .entries()
            .filter_map(|e| {
                let key = e.object().nid().short_name().ok()?;
                Some(format!("{key}={}", e.data().to_string().ok()?))
            })
            .collect::<Vec<_>>()
            .join(", ");
        let names = cert
            .subject_alt_names()
            .map(|sans| {
                sans.iter()
                    .filter_map(|n| {
                        n.dnsname().map(str::to_owned).or_else(|| {
                            let ip = n.ipaddress()?;
                            let ip: std::net::IpAddr = match ip.len() {
                                4 => <[u8; 4]>::try_from(ip).ok()?.into(),
                                16 => <[u8; 16]>::try_from(ip).ok()?.into(),
                                _ => return None,
                            };
                            Some(ip.to_string())
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let serial = cert
            .serial_number()
            .to_bn()
            .and_then(|bn| bn.to_hex_str().map(|s| s.to_string()))
            .unwrap_or_default();
        Self {
            subject,
            names,
            serial,
            not_after: cert.not_after().to_string(),
        }
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "subject \"{}\"", self.subject)?;
        if !self.names.is_empty() {
            write!(f, ", names {}", self.names.join(" "))?;
        }
        write!(f, ", serial {}, expires {}", self.serial, self.not_after)
    }
}
