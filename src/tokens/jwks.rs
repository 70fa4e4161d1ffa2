//! Where the validation tokens' signing keys come from: a JWKS document read
//! from a file or fetched (and cached) from a URL.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use reqwest::Url;
use serde::Deserialize;

/// Microsoft identity platform's signing keys (v2.0 endpoint), the default
/// [`Jwks`] source.
pub const MICROSOFT_JWKS_URL: &str = "https://login.microsoftonline.com/common/discovery/v2.0/keys";

/// Largest JWKS document accepted (Microsoft's is a few kilobytes).
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Why a JWKS could not be used.
#[derive(Debug)]
#[non_exhaustive]
pub enum JwksError {
    /// The file could not be read.
    Io(std::io::Error),
    /// The document is not a JWKS (`{"keys":[…]}`) or has no usable RSA
    /// signing key.
    Invalid(String),
    /// The URL is not `https://` (plain `http://` is allowed to loopback
    /// addresses only, for tests and local emulators).
    Url(String),
    /// Fetching the document failed.
    Fetch(String),
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::Io(e) => write!(f, "cannot read the JWKS file: {e}"),
            JwksError::Invalid(why) => write!(f, "not a usable JWKS: {why}"),
            JwksError::Url(why) => write!(f, "unusable JWKS URL: {why}"),
            JwksError::Fetch(why) => write!(f, "fetching the JWKS failed: {why}"),
        }
    }
}

impl std::error::Error for JwksError {}

/// The RSA signing keys of one JWKS document, by `kid`.
pub(crate) struct KeySet {
    keys: HashMap<String, DecodingKey>,
}

#[derive(Deserialize)]
struct WireSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct WireKey {
    kty: String,
    kid: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    alg: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl KeySet {
    /// Parses a JWKS, keeping the RSA signature keys that have a `kid`;
    /// other entries (EC keys, encryption keys) are skipped, not fatal.
    fn parse(json: &[u8]) -> Result<Self, JwksError> {
        let set: WireSet =
            serde_json::from_slice(json).map_err(|e| JwksError::Invalid(e.to_string()))?;
        let mut keys = HashMap::new();
        for entry in set.keys {
            let Ok(key) = serde_json::from_value::<WireKey>(entry) else {
                continue;
            };
            let usable = key.kty == "RSA"
                && key.use_.as_deref().is_none_or(|u| u == "sig")
                && key.alg.as_deref().is_none_or(|a| a == "RS256");
            let (Some(kid), Some(n), Some(e), true) = (key.kid, key.n, key.e, usable) else {
                continue;
            };
            if let Ok(decoding) = DecodingKey::from_rsa_components(&n, &e) {
                keys.insert(kid, decoding);
            }
        }
        if keys.is_empty() {
            return Err(JwksError::Invalid("no RSA signing key with a kid".into()));
        }
        Ok(Self { keys })
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.get(kid)
    }
}

/// The source of the keys that sign validation tokens.
///
/// - [`Jwks::microsoft`] (the default) and [`Jwks::from_url`]: fetched over
///   HTTPS when first needed, cached, refetched when a token names a `kid`
///   the cache does not have (at most once per
///   [`min_refresh_interval`](Self::min_refresh_interval), so forged `kid`s
///   cannot make the receiver hammer the endpoint) and when older than a day
///   (Microsoft rotates keys daily). A failed refetch keeps the old keys.
/// - [`Jwks::from_file`] / [`Jwks::from_json`]: a fixed set, e.g. for tests,
///   an emulator, or a machine without internet access.
///
/// Keys are only ever taken from here: a token's own `jku`, `x5u` or `jwk`
/// header is ignored.
#[derive(Clone)]
pub struct Jwks {
    source: Source,
}

#[derive(Clone)]
enum Source {
    Fixed(Arc<KeySet>),
    Remote(Arc<Remote>),
}

impl fmt::Debug for Jwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Fixed(set) => f
                .debug_struct("Jwks")
                .field("kids", &set.keys.keys().collect::<Vec<_>>())
                .finish(),
            Source::Remote(remote) => f
                .debug_struct("Jwks")
                .field("url", &remote.url.as_str())
                .finish_non_exhaustive(),
        }
    }
}

struct Remote {
    url: Url,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    current: RwLock<Option<(Arc<KeySet>, Instant)>>,
    /// Serialises fetches and remembers the last attempt.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

/// What looking up a `kid` gave.
pub(crate) enum Lookup {
    Found(Arc<KeySet>),
    Unknown,
    Unavailable(String),
}

impl Jwks {
    /// Microsoft's keys, from [`MICROSOFT_JWKS_URL`].
    pub fn microsoft() -> Self {
        // Invariant: the constant is an https URL.
        Self::from_url(MICROSOFT_JWKS_URL).expect("the Microsoft JWKS URL is valid")
    }

    /// Keys fetched from `url` (`https://`, or `http://` to a loopback host).
    ///
    /// # Errors
    ///
    /// [`JwksError::Url`] for other URLs; [`JwksError::Fetch`] if no HTTP
    /// client can be built.
    pub fn from_url(url: &str) -> Result<Self, JwksError> {
        let url = Url::parse(url).map_err(|e| JwksError::Url(e.to_string()))?;
        let loopback = url.host_str().is_some_and(|host| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback => {}
            other => {
                return Err(JwksError::Url(format!(
                    "{other}:// is not allowed; use https:// (http:// only to a loopback address)"
                )));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| JwksError::Fetch(e.to_string()))?;
        Ok(Self {
            source: Source::Remote(Arc::new(Remote {
                url,
                client,
                min_refresh: Duration::from_secs(300),
                max_age: Duration::from_secs(24 * 3600),
                current: RwLock::new(None),
                fetching: tokio::sync::Mutex::new(None),
            })),
        })
    }

    /// A fixed set read from a JWKS file.
    ///
    /// # Errors
    ///
    /// [`JwksError::Io`], [`JwksError::Invalid`].
    pub fn from_file(path: &Path) -> Result<Self, JwksError> {
        let bytes = crate::files::read_capped(path).map_err(JwksError::Io)?;
        Self::from_json(&bytes)
    }

    /// A fixed set from a JWKS document.
    ///
    /// # Errors
    ///
    /// [`JwksError::Invalid`] when it holds no RSA signing key with a `kid`.
    pub fn from_json(json: &[u8]) -> Result<Self, JwksError> {
        Ok(Self {
            source: Source::Fixed(Arc::new(KeySet::parse(json)?)),
        })
    }

    /// A URL when `source` starts with `http://` or `https://`, else a file:
    /// the CLI's `--jwks URL|PATH`.
    ///
    /// # Errors
    ///
    /// As [`from_url`](Self::from_url) or [`from_file`](Self::from_file).
    pub fn from_source(source: &str) -> Result<Self, JwksError> {
        let lower = source.to_ascii_lowercase();
        if lower.starts_with("https://") || lower.starts_with("http://") {
            Self::from_url(source)
        } else {
            Self::from_file(Path::new(source))
        }
    }

    /// How soon after a fetch an unknown `kid` may cause another (default
    /// 5 minutes). Has no effect on a fixed set.
    #[must_use]
    pub fn min_refresh_interval(mut self, interval: Duration) -> Self {
        if let Source::Remote(remote) = &mut self.source
            && let Some(remote) = Arc::get_mut(remote)
        {
            remote.min_refresh = interval;
        }
        self
    }

    /// The key set holding `kid`, fetching or refetching as the rules allow.
    pub(crate) async fn lookup(&self, kid: &str) -> Lookup {
        match &self.source {
            Source::Fixed(set) if set.get(kid).is_some() => Lookup::Found(set.clone()),
            Source::Fixed(_) => Lookup::Unknown,
            Source::Remote(remote) => remote.lookup(kid).await,
        }
    }
}

impl Remote {
    fn cached(&self) -> Option<(Arc<KeySet>, Instant)> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    async fn lookup(&self, kid: &str) -> Lookup {
        if let Some((set, fetched)) = self.cached()
            && set.get(kid).is_some()
            && fetched.elapsed() < self.max_age
        {
            return Lookup::Found(set);
        }
        let mut last_attempt = self.fetching.lock().await;
        // Another task may have fetched while this one waited.
        let cached = self.cached();
        if let Some((set, fetched)) = &cached
            && set.get(kid).is_some()
            && fetched.elapsed() < self.max_age
        {
            return Lookup::Found(set.clone());
        }
        let stale = |c: &Option<(Arc<KeySet>, Instant)>| match c {
            Some((set, _)) if set.get(kid).is_some() => Lookup::Found(set.clone()),
            _ => Lookup::Unknown,
        };
        if let (Some(_), Some(at)) = (&cached, *last_attempt)
            && at.elapsed() < self.min_refresh
        {
            return stale(&cached);
        }
        *last_attempt = Some(Instant::now());
        match self.fetch().await {
            Ok(set) => {
                let set = Arc::new(set);
                if let Ok(mut current) = self.current.write() {
                    *current = Some((set.clone(), Instant::now()));
                }
                tracing::debug!(url = %self.url, kids = set.keys.len(), "fetched the JWKS");
                if set.get(kid).is_some() {
                    Lookup::Found(set)
                } else {
                    Lookup::Unknown
                }
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, "fetching the JWKS failed");
                match stale(&cached) {
                    Lookup::Found(set) => Lookup::Found(set),
                    _ => Lookup::Unavailable(e.to_string()),
                }
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let fail = |e: reqwest::Error| JwksError::Fetch(e.without_url().to_string());
        let mut response = self
            .client
            .get(self.url.clone())
            .header("accept", "application/json")
            .send()
            .await
            .map_err(fail)?;
        if !response.status().is_success() {
            return Err(JwksError::Fetch(format!("status {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(fail)? {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(JwksError::Fetch("document too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        KeySet::parse(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_keeps_rsa_signing_keys_only() {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let b64 = |b: Vec<u8>| {
            use base64::Engine as _;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        };
        let (n, e) = (b64(rsa.n().to_vec()), b64(rsa.e().to_vec()));
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "use": "sig", "n": n, "e": e, "x5c": ["…"]},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": e},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": e},
            {"kty": "RSA", "n": n, "e": e},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "bad", "n": "!!", "e": e},
            "not an object"
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.keys().collect::<Vec<_>>(), ["a"]);
        for bad in ["", "{}", r#"{"keys":{}}"#, r#"{"keys":[]}"#, "[1]"] {
            assert!(KeySet::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(Jwks::from_url("https://login.example/keys").is_ok());
        assert!(Jwks::from_url("http://127.0.0.1:9/keys").is_ok());
        assert!(Jwks::from_url("http://[::1]:9/keys").is_ok());
        assert!(Jwks::from_url("http://localhost:9/keys").is_ok());
        for bad in ["http://login.example/keys", "ftp://127.0.0.1/", "not a url"] {
            assert!(
                matches!(Jwks::from_url(bad), Err(JwksError::Url(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Jwks::from_source("/nonexistent/jwks.json"),
            Err(JwksError::Io(_))
        ));
        let _ = Jwks::microsoft();
    }
}
