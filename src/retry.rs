//! The one retry policy: how often, and how long apart, a failed attempt is
//! tried again. The workers use it for handler failures
//! ([`ReceiverBuilder::retry`](crate::ReceiverBuilder::retry)); the Graph
//! client, the token provider and the manager's handshake retries use it
//! for requests ([`GraphClient::retry`](crate::subscriptions::GraphClient::retry)).
//!
//! The wait after a failure is exponential (`base_delay`, doubled after
//! each failure, capped at `max_delay`) less up to a quarter of random
//! jitter. Jitter spreads the retries of a burst; it only ever shortens the
//! wait, so `max_delay` is a true bound and the longest a policy can take
//! is the sum of its steps.
//!
//! ```
//! use std::time::Duration;
//! use msgraph_webhooks::retry::RetryPolicy;
//!
//! let policy = RetryPolicy::new(5, Duration::from_millis(100));
//! let third = policy.backoff(3); // after the third failure: 400 ms less jitter
//! assert!(third <= Duration::from_millis(400) && third >= Duration::from_millis(300));
//! ```

use std::time::Duration;

/// When and how often a failed attempt is tried again, with exponential
/// backoff; see the [module docs](self).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1). For handler
    /// failures, the item is dead-lettered after the last.
    pub max_attempts: u32,
    /// The wait after the first failure; doubled after each.
    pub base_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
    /// The longest `Retry-After` a server's answer is honoured with; longer
    /// ones are cut to this (requests only).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s after the first failure, at most 5 minutes apart,
    /// `Retry-After` honoured up to 2 minutes.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting `base_delay`, then twice as long
    /// each time (the rest as in [`Default`]).
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

    /// What the Graph client and the token provider use unless told
    /// otherwise: 5 attempts, 500 ms after the first failure, at most 30 s
    /// apart (a caller waits on them).
    pub(crate) fn requests() -> Self {
        Self {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            ..Self::default()
        }
    }

    /// The wait after failed attempt `attempt` (1-based): the exponential
    /// step, at most `max_delay`, less up to a quarter of jitter.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
            .min(self.max_delay);
        step.mul_f64(1.0 - 0.25 * crate::random::unit())
    }
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
}
