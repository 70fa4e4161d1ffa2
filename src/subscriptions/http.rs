//! What every call to Graph or the token endpoint shares: bounded reads,
//! `Retry-After`, remote text made safe to show, and the retry policy.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use time::OffsetDateTime;

/// Longest text of a remote error message kept.
pub(super) const MAX_MESSAGE: usize = 1000;

/// When and how often a failed request is tried again: on `429` and `5xx`
/// answers (after `Retry-After` when Graph sends it) and on connection
/// errors, with exponential backoff.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each.
    pub base_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; longer ones are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting `base_delay`, then twice as long each time.
    pub fn new(max_attempts: u32, base_delay: Duration) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            base_delay,
            ..Self::default()
        }
    }

    /// No retries.
    pub fn none() -> Self {
        Self::new(1, Duration::ZERO)
    }

    /// The wait after failed attempt `attempt` (1-based): the exponential
    /// step with up to a quarter of jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_delay);
        step.mul_f64(1.0 - 0.25 * crate::random::unit())
    }
}

/// A remote text made safe to show: control characters replaced, length bounded.
pub(crate) fn clean(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(MAX_MESSAGE)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().count() > MAX_MESSAGE {
        out.push('…');
    }
    out
}

/// Reads a body of at most `limit` bytes.
pub(crate) async fn read_limited(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, String> {
    if response
        .content_length()
        .is_some_and(|len| len > limit as u64)
    {
        return Err(format!("the answer is larger than {limit} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| clean(&e.to_string()))? {
        if body.len() + chunk.len() > limit {
            return Err(format!("the answer is larger than {limit} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

/// `Retry-After` in seconds or as an HTTP date, at most `cap`.
pub(crate) fn retry_after(headers: &HeaderMap, cap: Duration) -> Option<Duration> {
    let value = headers.get("retry-after")?.to_str().ok()?.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at =
            OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
        Duration::try_from(at - OffsetDateTime::now_utc()).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let policy = RetryPolicy::new(5, Duration::from_millis(100));
        assert!(policy.backoff(1) <= Duration::from_millis(100));
        assert!(policy.backoff(3) >= Duration::from_millis(300));
        assert!(policy.backoff(40) <= policy.max_delay);
    }

    #[test]
    fn retry_after_in_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "7".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::from_secs(7))
        );
        headers.insert("retry-after", "99999".parse().unwrap());
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::from_secs(60))
        );
        headers.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(
            retry_after(&headers, Duration::from_secs(60)),
            Some(Duration::ZERO)
        );
        headers.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&headers, Duration::from_secs(60)), None);
    }
}
