//! The one clock trait: what the token validator checks `exp`/`nbf` by and
//! what the subscription manager plans expirations and renewals by,
//! injected so tests freeze time or run Graph's days in seconds.
//!
//! One trait serves both: the validator only reads [`Clock::now`]; the
//! manager also waits with [`Clock::sleep_until`], which has a default (real
//! time, re-checked against `now()`), so a clock that is only read
//! implements `now()` alone. The emulator's [`Clock`](crate::emulator::Clock)
//! (feature `emulator`) implements it, and so does
//! [`RemoteClock`](crate::subscriptions::RemoteClock), which follows an
//! emulator in another process.
//!
//! ```
//! use std::sync::Arc;
//! use msgraph_webhooks::clock::Clock;
//! use msgraph_webhooks::time::OffsetDateTime;
//!
//! /// A clock frozen at one instant, for tests.
//! struct Frozen(OffsetDateTime);
//!
//! impl Clock for Frozen {
//!     fn now(&self) -> OffsetDateTime {
//!         self.0
//!     }
//! }
//!
//! let clock: Arc<dyn Clock> = Arc::new(Frozen(OffsetDateTime::from_unix_timestamp(1_796_126_400)?));
//! assert_eq!(clock.now().unix_timestamp(), 1_796_126_400);
//! # Ok::<(), msgraph_webhooks::time::error::ComponentRange>(())
//! ```

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

/// Longest real sleep between two looks at the clock: a clock that jumps
/// (the system's, adjusted) is followed within this.
const SLICE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where the time is read and a deadline waited for.
///
/// It must run with Graph's time: the system clock for Graph, the
/// emulator's clock for the emulator.
pub trait Clock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> OffsetDateTime;

    /// Completes when [`now`](Self::now) reaches `deadline` (at once if it
    /// passed).
    ///
    /// The default sleeps in real time, in slices of at most a minute,
    /// until `now()` has reached `deadline`: right for any clock that runs
    /// at real speed (a frozen clock waits forever; a scaled one overrides
    /// this).
    fn sleep_until(&self, deadline: OffsetDateTime) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            loop {
                let left = deadline - self.now();
                if left <= time::Duration::ZERO {
                    return;
                }
                let slice = std::time::Duration::try_from(left)
                    .unwrap_or(std::time::Duration::MAX)
                    .min(SLICE);
                tokio::time::sleep(slice).await;
            }
        })
    }
}

/// The system clock, for Graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_system_clock_sleeps_until_a_near_deadline() {
        let clock = SystemClock;
        let deadline = clock.now() + time::Duration::milliseconds(50);
        clock.sleep_until(deadline).await;
        assert!(clock.now() >= deadline);
        // A deadline in the past: at once.
        let started = std::time::Instant::now();
        clock.sleep_until(deadline - time::Duration::hours(1)).await;
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
