//! The time the subscription manager plans by, injected so tests can run
//! Graph's lifetimes in seconds (the emulator's scaled [`Clock`](crate::emulator::Clock)
//! implements it).

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

/// Where the manager reads the time and waits for a deadline.
///
/// Expirations, renewal times and the 10-minute rule between reauthorize
/// and renew are planned on it. It must run with Graph's time: the system
/// clock for Graph, the emulator's clock for the emulator.
pub trait Clock: Send + Sync + 'static {
    /// The time now.
    fn now(&self) -> OffsetDateTime;

    /// Completes when the time is `deadline` (at once if it passed).
    fn sleep_until(&self, deadline: OffsetDateTime) -> BoxFuture<'_, ()>;
}

/// The system clock, for Graph.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // Re-planned in slices, so a system clock that jumps is followed.
            loop {
                let left = deadline - OffsetDateTime::now_utc();
                if left <= time::Duration::ZERO {
                    return;
                }
                let slice = std::time::Duration::try_from(left)
                    .unwrap_or(std::time::Duration::MAX)
                    .min(std::time::Duration::from_secs(60));
                tokio::time::sleep(slice).await;
            }
        })
    }
}

#[cfg(feature = "emulator")]
impl Clock for crate::emulator::Clock {
    fn now(&self) -> OffsetDateTime {
        crate::emulator::Clock::now(self)
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> BoxFuture<'_, ()> {
        Box::pin(crate::emulator::Clock::sleep_until(self, deadline))
    }
}
