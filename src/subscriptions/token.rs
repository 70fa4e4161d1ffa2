//! Access tokens for Graph: the [`TokenProvider`] trait and the app-only
//! client-credentials flow, with tokens cached until shortly before expiry.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::http::{clean, read_limited, retry_after};
use crate::retry::RetryPolicy;

/// The token endpoint of Microsoft Entra ID; `{tenant}` stands for the tenant
/// id or domain.
pub const DEFAULT_TOKEN_URL: &str = "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token";

/// The scope of an app-only token for Graph: every application permission
/// the app was granted.
pub const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

/// Largest token-endpoint answer read.
const MAX_TOKEN_BODY: usize = 64 * 1024;

/// A bearer token for Graph. `Debug` never shows it.
#[derive(Clone)]
pub struct AccessToken(Arc<Zeroizing<String>>);

impl AccessToken {
    /// Wraps a token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(Arc::new(Zeroizing::new(token.into())))
    }

    /// The token, to put in an `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AccessToken(<redacted>)")
    }
}

/// An app's client secret. `Debug` never shows it; it is zeroized when dropped.
#[derive(Clone)]
pub struct ClientSecret(Zeroizing<String>);

impl ClientSecret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(Zeroizing::new(secret.into()))
    }

    /// The secret, for the token request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientSecret(<redacted>)")
    }
}

impl From<&str> for ClientSecret {
    fn from(secret: &str) -> Self {
        Self::new(secret)
    }
}

impl From<String> for ClientSecret {
    fn from(secret: String) -> Self {
        Self::new(secret)
    }
}

/// Why no access token for Graph could be had (acquiring the app's token;
/// checking the validation tokens of rich notifications fails with
/// [`tokens::TokenError`](crate::tokens::TokenError) instead).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    /// The token endpoint refused: a wrong client id or secret, an unknown
    /// tenant, a scope the app may not have. Carries the endpoint's OAuth
    /// `error` and `error_description`.
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The OAuth error code, e.g. `invalid_client`.
        error: String,
        /// The endpoint's description of it.
        description: String,
    },
    /// The endpoint kept answering `429` or a server error (`5xx`) through
    /// every retry: an outage or throttling on its side, not a credentials
    /// problem. Carries the last status.
    Unavailable {
        /// The last HTTP status.
        status: u16,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The endpoint could not be reached, or kept failing.
    Transport(String),
    /// The endpoint answered something that is not a token.
    InvalidResponse(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Rejected {
                status,
                error,
                description,
            } => write!(
                f,
                "the token endpoint refused ({status} {error}): {description}; check the tenant id, the client id and the client secret"
            ),
            AuthError::Unavailable { status, attempts } => write!(
                f,
                "the token endpoint is unavailable ({status} after {attempts} attempt(s)): \
                 an outage or throttling on its side, not your credentials; trying again later"
            ),
            AuthError::Transport(why) => write!(f, "the token endpoint is unreachable: {why}"),
            AuthError::InvalidResponse(why) => {
                write!(f, "the token endpoint answered no token: {why}")
            }
        }
    }
}

impl std::error::Error for AuthError {}

/// Gives the bearer token for Graph requests.
pub trait TokenProvider: Send + Sync + 'static {
    /// A token valid for at least a little while.
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>>;

    /// Forgets a cached token that Graph refused (`401`), so the next
    /// [`token`](Self::token) fetches a new one.
    fn invalidate(&self) {}
}

impl<T: TokenProvider + ?Sized> TokenProvider for Arc<T> {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        (**self).token()
    }

    fn invalidate(&self) {
        (**self).invalidate();
    }
}

/// A token obtained elsewhere (tests, a delegated token from your own flow).
#[derive(Clone, Debug)]
pub struct StaticToken(AccessToken);

impl StaticToken {
    /// Always gives `token`.
    pub fn new(token: impl Into<String>) -> Self {
        Self(AccessToken::new(token))
    }
}

impl TokenProvider for StaticToken {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(std::future::ready(Ok(self.0.clone())))
    }
}

struct Cached {
    token: AccessToken,
    refresh_at: Instant,
}

/// The OAuth client-credentials flow (app-only tokens), as Entra ID serves
/// it: `POST {token URL}` with the client id, secret and the `.default`
/// scope of Graph. Tokens are cached until [`refresh_before`](Self::refresh_before)
/// their expiry; concurrent callers share one request.
///
/// ```
/// use msgraph_webhooks::subscriptions::ClientCredentials;
///
/// let tokens = ClientCredentials::new("contoso.onmicrosoft.com", "client id", "client secret");
/// assert_eq!(
///     tokens.token_endpoint(),
///     "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
/// );
/// assert!(!format!("{tokens:?}").contains("client secret"));
/// ```
pub struct ClientCredentials {
    token_url: String,
    client_id: String,
    secret: ClientSecret,
    scope: String,
    refresh_before: Duration,
    retry: RetryPolicy,
    http: reqwest::Client,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("secret", &self.secret)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct OauthError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl ClientCredentials {
    /// The flow for app `client_id` in `tenant` (an id or a domain), against
    /// Entra ID's token endpoint.
    pub fn new(
        tenant: impl AsRef<str>,
        client_id: impl Into<String>,
        secret: impl Into<ClientSecret>,
    ) -> Self {
        Self {
            token_url: DEFAULT_TOKEN_URL.replace("{tenant}", tenant.as_ref()),
            client_id: client_id.into(),
            secret: secret.into(),
            scope: GRAPH_SCOPE.to_owned(),
            refresh_before: Duration::from_secs(5 * 60),
            retry: RetryPolicy::requests(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            cache: tokio::sync::Mutex::new(None),
        }
    }

    /// Another token endpoint (a national cloud, the emulator's).
    #[must_use]
    pub fn token_url(mut self, url: impl Into<String>) -> Self {
        self.token_url = url.into();
        self
    }

    /// Another scope than `https://graph.microsoft.com/.default`.
    #[must_use]
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scope = scope.into();
        self
    }

    /// How long before its expiry a cached token is replaced (5 minutes).
    #[must_use]
    pub fn refresh_before(mut self, margin: Duration) -> Self {
        self.refresh_before = margin;
        self
    }

    /// Retries of the token request (on `429`, `5xx` and connection errors).
    #[must_use]
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The token endpoint used.
    pub fn token_endpoint(&self) -> &str {
        &self.token_url
    }

    async fn fetch(&self) -> Result<(AccessToken, Duration), AuthError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.secret.expose())
            .append_pair("scope", &self.scope)
            .finish();
        let body = Zeroizing::new(body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(&self.token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("accept", "application/json")
                .body(body.as_bytes().to_vec())
                .send()
                .await;
            let response = match sent {
                Ok(response) => response,
                Err(e) if attempt < self.retry.max_attempts => {
                    tracing::debug!(error = %e, attempt, "token request failed; retrying");
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(AuthError::Transport(clean(&e.to_string()))),
            };
            let status = response.status();
            if (status.as_u16() == 429 || status.is_server_error())
                && attempt < self.retry.max_attempts
            {
                let wait = retry_after(response.headers(), self.retry.max_retry_after)
                    .unwrap_or_else(|| self.retry.backoff(attempt));
                tracing::debug!(%status, attempt, ?wait, "token endpoint busy; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            if status.as_u16() == 429 || status.is_server_error() {
                return Err(AuthError::Unavailable {
                    status: status.as_u16(),
                    attempts: attempt,
                });
            }
            let bytes = read_limited(response, MAX_TOKEN_BODY)
                .await
                .map_err(AuthError::Transport)?;
            if !status.is_success() {
                let parsed: Option<OauthError> = serde_json::from_slice(&bytes).ok();
                let (error, description) = parsed.map_or_else(
                    || {
                        (
                            "unknown".to_owned(),
                            "no OAuth error in the answer".to_owned(),
                        )
                    },
                    |e| (clean(&e.error), clean(&e.error_description)),
                );
                return Err(AuthError::Rejected {
                    status: status.as_u16(),
                    error,
                    description,
                });
            }
            let answer: TokenAnswer = serde_json::from_slice(&bytes).map_err(|_| {
                AuthError::InvalidResponse("not a JSON object with access_token".to_owned())
            })?;
            if answer.access_token.is_empty() {
                return Err(AuthError::InvalidResponse(
                    "access_token is empty".to_owned(),
                ));
            }
            // Entra sends a number; some proxies a string. Unknown: assume an hour.
            let lifetime = answer
                .expires_in
                .as_ref()
                .and_then(|v| v.as_u64().or_else(|| v.as_str()?.trim().parse().ok()))
                .unwrap_or(3600)
                .min(24 * 3600);
            return Ok((
                AccessToken::new(answer.access_token),
                Duration::from_secs(lifetime),
            ));
        }
    }
}

impl TokenProvider for ClientCredentials {
    fn token(&self) -> BoxFuture<'_, Result<AccessToken, AuthError>> {
        Box::pin(async move {
            let mut cache = self.cache.lock().await;
            if let Some(cached) = cache.as_ref()
                && Instant::now() < cached.refresh_at
            {
                return Ok(cached.token.clone());
            }
            let requested = Instant::now();
            let (token, lifetime) = self.fetch().await?;
            *cache = Some(Cached {
                token: token.clone(),
                refresh_at: requested + lifetime.saturating_sub(self.refresh_before),
            });
            Ok(token)
        })
    }

    fn invalidate(&self) {
        if let Ok(mut cache) = self.cache.try_lock() {
            *cache = None;
        }
    }
}
