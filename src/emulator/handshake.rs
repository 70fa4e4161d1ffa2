//! Graph's validation request (Microsoft Learn, "Receive change notifications through webhooks", <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>): inside the create (or
//! URL-changing update) call, POST `?validationToken=…` to the endpoint and
//! require `200 OK`, "a content type of `text/plain`" (parameters such as
//! `charset` aside: Graph's own request carries `text/plain;
//! charset=utf-8`) and exactly the token, within 10 seconds.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::Url;

/// Why a validation request failed; `Display` is Graph's message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeError {
    /// No complete answer within the time limit.
    TimedOut,
    /// No answer at all (connection refused or closed), or a status other than 200.
    NotOk,
    /// 200, but the body is not exactly the token.
    Mismatch,
    /// 200, but the answer's content type is not `text/plain`.
    NotPlainText,
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HandshakeError::TimedOut => "Subscription validation request timed out.",
            HandshakeError::NotOk => {
                "Subscription validation request failed. Notification endpoint must respond with 200 OK to validation request."
            }
            HandshakeError::Mismatch => {
                "Subscription validation request failed. Response must exactly match validationToken query parameter."
            }
            // Graph documents the rule, not its message: this one names it.
            HandshakeError::NotPlainText => {
                "Subscription validation request failed. Response must have a content type of text/plain."
            }
        })
    }
}

/// What a validation request did, for the deliveries log.
#[derive(Debug)]
pub(crate) struct Attempt {
    pub(crate) status: Option<u16>,
    pub(crate) latency: Duration,
    pub(crate) result: Result<(), HandshakeError>,
}

/// Largest answer read; a token is far shorter, and a bigger body cannot match.
const MAX_BODY: usize = 16 * 1024;

/// The token Graph sends: the text observed in the wild, with a fresh request id.
pub(crate) fn new_token() -> String {
    format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        crate::random::uuid()
    )
}

/// `url` with `validationToken=` appended to its own query, form-encoded
/// (spaces as `+`, `:` as `%3A`) as Graph sends it.
pub(crate) fn validation_url(url: &Url, token: &str) -> Url {
    let mut url = url.clone();
    url.query_pairs_mut().append_pair("validationToken", token);
    url
}

/// Whether a `Content-Type` is `text/plain`, in any case, with or without
/// parameters (`; charset=utf-8`).
fn is_plain_text(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("text/plain"))
}

/// Sends one validation request and checks the answer.
pub(crate) async fn validate(client: &reqwest::Client, url: &Url, limit: Duration) -> Attempt {
    let token = new_token();
    let target = validation_url(url, &token);
    let started = Instant::now();
    let exchange = async {
        let mut response = client
            .post(target)
            .header("content-type", "text/plain; charset=utf-8")
            .header("content-length", "0")
            .send()
            .await
            .map_err(|_| (None, HandshakeError::NotOk))?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err((Some(status), HandshakeError::NotOk));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        if !is_plain_text(content_type) {
            return Err((Some(status), HandshakeError::NotPlainText));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|_| (Some(status), HandshakeError::NotOk))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err((Some(status), HandshakeError::Mismatch));
            }
            body.extend_from_slice(&chunk);
        }
        if body == token.as_bytes() {
            Ok(status)
        } else {
            Err((Some(status), HandshakeError::Mismatch))
        }
    };
    let outcome = tokio::time::timeout(limit, exchange).await;
    let latency = started.elapsed();
    match outcome {
        Ok(Ok(status)) => Attempt {
            status: Some(status),
            latency,
            result: Ok(()),
        },
        Ok(Err((status, error))) => Attempt {
            status,
            latency,
            result: Err(error),
        },
        Err(_) => Attempt {
            status: None,
            latency,
            result: Err(HandshakeError::TimedOut),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_plain_answers_validate() {
        for good in [
            "text/plain",
            "text/plain; charset=utf-8",
            "Text/Plain;charset=UTF-8",
            " text/plain ",
        ] {
            assert!(is_plain_text(Some(good)), "{good}");
        }
        for bad in [
            "text/html",
            "text/html; charset=utf-8",
            "application/json",
            "text/plainx",
            "",
            "text",
        ] {
            assert!(!is_plain_text(Some(bad)), "{bad}");
        }
        assert!(!is_plain_text(None));
    }

    #[test]
    fn token_is_form_encoded_after_the_urls_own_query() {
        let url = Url::parse("http://127.0.0.1:8080/hook?tenant=a%20b").unwrap();
        let token =
            "Validation: Testing client application reachability for subscription Request-Id: 1";
        let target = validation_url(&url, token);
        assert_eq!(
            target.query(),
            Some(
                "tenant=a%20b&validationToken=Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+1"
            )
        );
        let plain = validation_url(&Url::parse("https://x.example/n").unwrap(), "a b");
        assert_eq!(plain.as_str(), "https://x.example/n?validationToken=a+b");
        assert!(new_token().starts_with(
            "Validation: Testing client application reachability for subscription Request-Id: "
        ));
    }
}
