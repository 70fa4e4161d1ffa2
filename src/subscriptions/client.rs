//! A client for Graph's `/subscriptions`: typed subscriptions, tokens from a
//! [`TokenProvider`], retries with backoff, Graph's error envelope as a type.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use time::OffsetDateTime;

use super::error::{ClientError, graph_error};
use super::http::{clean, read_limited, retry_after};
use super::model::{NewSubscription, Subscription, SubscriptionUpdate};
use super::preflight::{self, LifetimePolicy};
use super::token::TokenProvider;
use crate::clock::{Clock, SystemClock};
use crate::retry::RetryPolicy;

/// Graph's v1.0 endpoint.
pub const DEFAULT_GRAPH_URL: &str = "https://graph.microsoft.com/v1.0";

/// Largest answer read from Graph (a page of 100 subscriptions is ~100 KiB).
const MAX_BODY: usize = 4 * 1024 * 1024;

/// Most pages `list` follows; a server that links on forever is cut off.
const MAX_PAGES: usize = 1000;

/// What is escaped in a path segment: all but the unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Deserialize)]
struct Page {
    value: Vec<Subscription>,
    #[serde(rename = "@odata.nextLink", default)]
    next_link: Option<String>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    tokens: Arc<dyn TokenProvider>,
    retry: RetryPolicy,
    clock: Arc<dyn Clock>,
}

/// A client for Graph's subscriptions API.
///
/// Every request carries a bearer token from the [`TokenProvider`]; a `401`
/// makes it fetch a new token once. `429` and `5xx` answers and connection
/// errors are retried per the [`RetryPolicy`], after `Retry-After` when
/// Graph sends one. [`create`](Self::create) runs the [pre-flight
/// checks](super::preflight) first and sends nothing that breaks a rule.
/// Cloning is cheap and shares the connection pool.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("base", &self.inner.base)
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

impl GraphClient {
    /// A client for Graph v1.0 with tokens from `tokens`.
    pub fn new(tokens: impl TokenProvider) -> Self {
        Self {
            inner: Arc::new(Inner {
                http: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    // A create waits for Graph's handshake (10 s) with each URL.
                    .timeout(Duration::from_secs(60))
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(concat!("msgraph-webhooks/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .unwrap_or_default(),
                base: DEFAULT_GRAPH_URL.to_owned(),
                tokens: Arc::new(tokens),
                retry: RetryPolicy::requests(),
                clock: Arc::new(SystemClock),
            }),
        }
    }

    fn with(self, change: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = match Arc::try_unwrap(self.inner) {
            Ok(inner) => inner,
            Err(shared) => Inner {
                http: shared.http.clone(),
                base: shared.base.clone(),
                tokens: shared.tokens.clone(),
                retry: shared.retry.clone(),
                clock: shared.clock.clone(),
            },
        };
        change(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Another Graph base URL (the emulator's, a national cloud, `beta`).
    #[must_use]
    pub fn base_url(self, url: impl Into<String>) -> Self {
        let url = url.into().trim_end_matches('/').to_owned();
        self.with(|inner| inner.base = url)
    }

    /// Retries of failed requests.
    #[must_use]
    pub fn retry(self, retry: RetryPolicy) -> Self {
        self.with(|inner| inner.retry = retry)
    }

    /// The clock the pre-flight checks compare expirations with.
    #[must_use]
    pub fn clock(self, clock: Arc<dyn Clock>) -> Self {
        self.with(|inner| inner.clock = clock)
    }

    /// The Graph base URL in use.
    pub fn graph_url(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn now(&self) -> OffsetDateTime {
        self.inner.clock.now()
    }

    pub(crate) fn clock_handle(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    fn url(&self, id: &str, suffix: &str) -> String {
        format!(
            "{}/subscriptions/{}{suffix}",
            self.inner.base,
            utf8_percent_encode(id, SEGMENT)
        )
    }

    /// Creates a subscription, after the pre-flight checks (an expiration
    /// over the kind's maximum is an error here; the manager clamps when asked).
    ///
    /// # Errors
    ///
    /// [`ClientError::Preflight`] without sending anything; otherwise what
    /// Graph answered (`400` for a failed handshake, `403` for missing
    /// permissions, `409` for a duplicate, …).
    pub async fn create(
        &self,
        subscription: &NewSubscription,
    ) -> Result<Subscription, ClientError> {
        let checked = preflight::check(subscription, self.now(), LifetimePolicy::Reject)
            .map_err(ClientError::Preflight)?;
        let body = serde_json::to_vec(&checked)
            .map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        let url = format!("{}/subscriptions", self.inner.base);
        self.call(Method::POST, &url, Some(body)).await
    }

    /// Reads one subscription.
    ///
    /// # Errors
    ///
    /// `404` when it expired or was deleted; transport and token errors.
    pub async fn get(&self, id: &str) -> Result<Subscription, ClientError> {
        self.call(Method::GET, &self.url(id, ""), None).await
    }

    /// Every subscription of the app visible to the token, following
    /// `@odata.nextLink` (only to Graph's own origin: the token is not sent
    /// elsewhere).
    ///
    /// # Errors
    ///
    /// As [`get`](Self::get); [`ClientError::InvalidResponse`] for a next
    /// link to another origin or more than 1000 pages.
    pub async fn list(&self) -> Result<Vec<Subscription>, ClientError> {
        let mut url = format!("{}/subscriptions", self.inner.base);
        let origin = origin(&self.inner.base);
        let mut all = Vec::new();
        for _ in 0..MAX_PAGES {
            let (_, _, body) = self.send(Method::GET, &url, None).await?;
            let page: Page = serde_json::from_slice(&body).map_err(|e| {
                ClientError::InvalidResponse(format!(
                    "a subscriptions page: {}",
                    clean(&e.to_string())
                ))
            })?;
            all.extend(page.value);
            match page.next_link {
                None => return Ok(all),
                Some(next) if origin.is_some() && origin == self::origin(&next) => url = next,
                Some(_) => {
                    return Err(ClientError::InvalidResponse(
                        "@odata.nextLink points away from Graph's origin".to_owned(),
                    ));
                }
            }
        }
        Err(ClientError::InvalidResponse(format!(
            "more than {MAX_PAGES} pages of subscriptions"
        )))
    }

    /// Updates (renews, moves, re-keys) a subscription.
    ///
    /// # Errors
    ///
    /// `404` when it is gone: create a new one instead.
    pub async fn update(
        &self,
        id: &str,
        update: &SubscriptionUpdate,
    ) -> Result<Subscription, ClientError> {
        let body =
            serde_json::to_vec(update).map_err(|e| ClientError::InvalidResponse(e.to_string()))?;
        self.call(Method::PATCH, &self.url(id, ""), Some(body))
            .await
    }

    /// Deletes a subscription.
    ///
    /// # Errors
    ///
    /// `404` when it is already gone.
    pub async fn delete(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::DELETE, &self.url(id, ""), None).await?;
        Ok(())
    }

    /// Reauthorizes a subscription (`POST /subscriptions/{id}/reauthorize`):
    /// keeps notifications flowing without changing the expiration.
    ///
    /// # Errors
    ///
    /// `404` when it is gone.
    pub async fn reauthorize(&self, id: &str) -> Result<(), ClientError> {
        self.send(Method::POST, &self.url(id, "/reauthorize"), None)
            .await?;
        Ok(())
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let (_, _, bytes) = self.send(method, url, body).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ClientError::InvalidResponse(format!("a subscription: {}", clean(&e.to_string())))
        })
    }

    /// Sends one request with the retries of the policy.
    async fn send(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ClientError> {
        self.send_with(method, url, body, &[], MAX_BODY).await
    }

    /// [`send`](Self::send) with extra headers and another body limit.
    pub(super) async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        headers: &[(&'static str, String)],
        limit: usize,
    ) -> Result<(StatusCode, HeaderMap, Bytes), ClientError> {
        let retry = &self.inner.retry;
        let client_request_id = crate::random::uuid();
        let mut attempt = 0;
        let mut refreshed = false;
        loop {
            attempt += 1;
            let token = self
                .inner
                .tokens
                .token()
                .await
                .map_err(ClientError::Token)?;
            let mut request = self
                .inner
                .http
                .request(method.clone(), url)
                .bearer_auth(token.secret())
                .header("accept", "application/json")
                .header("client-request-id", &client_request_id);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(body) = &body {
                request = request
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(e) if attempt < retry.max_attempts => {
                    tracing::debug!(error = %e, %method, attempt, "graph request failed; retrying");
                    tokio::time::sleep(retry.backoff(attempt)).await;
                    continue;
                }
                Err(e) => return Err(ClientError::Transport(clean(&e.to_string()))),
            };
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                // The token may have been revoked or expired early: one fresh try.
                self.inner.tokens.invalidate();
                refreshed = true;
                attempt -= 1;
                continue;
            }
            if (status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error())
                && attempt < retry.max_attempts
            {
                let wait = retry_after(response.headers(), retry.max_retry_after)
                    .unwrap_or_else(|| retry.backoff(attempt));
                tracing::debug!(%status, %method, attempt, ?wait, "graph is busy; retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            let headers = response.headers().clone();
            let bytes = read_limited(response, limit)
                .await
                .map_err(ClientError::Transport)?;
            if status.is_success() {
                return Ok((status, headers, bytes));
            }
            return Err(ClientError::Graph(graph_error(status, &headers, &bytes)));
        }
    }
}

/// `scheme://host:port` of a URL.
pub(super) fn origin(url: &str) -> Option<String> {
    let url = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        assert_eq!(
            origin("https://graph.microsoft.com/v1.0"),
            origin("https://graph.microsoft.com:443/v1.0/subscriptions?$skiptoken=1")
        );
        assert_ne!(
            origin("https://graph.microsoft.com/v1.0"),
            origin("https://graph.microsoft.com.evil.example/v1.0")
        );
        assert_eq!(origin("not a url"), None);
    }
}
