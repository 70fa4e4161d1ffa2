//! Emulated time: the wall clock sped up by a scale factor and moved forward
//! on demand, so Graph's hours (retries for 4 h, 10-minute throttling
//! windows, subscription expiry) pass in seconds in tests.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The emulator's clock.
///
/// `now()` is the start time plus the real time elapsed since, multiplied by
/// the scale, plus every [`advance`](Self::advance). Everything the emulator
/// schedules (retries, throttling windows, expirations, reauthorization
/// notices) runs on it; waits are converted back to real time. Cloning is
/// cheap and shares the clock.
///
/// ```
/// use msgraph_webhooks::emulator::Clock;
///
/// let clock = Clock::new(3600.0); // an hour per second
/// let before = clock.now();
/// clock.advance(time::Duration::hours(2));
/// assert!(clock.now() - before >= time::Duration::hours(2));
/// ```
#[derive(Clone)]
pub struct Clock {
    inner: Arc<Inner>,
}

struct Inner {
    start: OffsetDateTime,
    started: Instant,
    scale: f64,
    advanced: Mutex<Duration>,
    jumped: Notify,
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Clock")
            .field("now", &self.now())
            .field("scale", &self.inner.scale)
            .finish()
    }
}

/// The crate's clock, so a manager (or a token validator) runs on emulated
/// time: the emulator's [`now`](Clock::now) and
/// [`sleep_until`](Clock::sleep_until).
impl crate::clock::Clock for Clock {
    fn now(&self) -> OffsetDateTime {
        Clock::now(self)
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(Clock::sleep_until(self, deadline))
    }
}

/// Longest single real wait; a wait is re-planned after it anyway.
const MAX_REAL_WAIT: StdDuration = StdDuration::from_secs(3600);

/// How far emulated time may run from its start: a century.
const MAX_SPAN_SECS: f64 = 100.0 * 365.25 * 86_400.0;

/// A configured span as emulated time, at most a century (so adding it to a
/// date never overflows).
pub(crate) fn emulated(span: StdDuration) -> Duration {
    Duration::try_from(span)
        .unwrap_or(Duration::MAX)
        .min(Duration::seconds_f64(MAX_SPAN_SECS))
}

/// A time scale made usable: positive and finite, within 0.001 to 1 000 000
/// (anything else is 1).
pub(crate) fn clamp_scale(scale: f64) -> f64 {
    if scale.is_finite() && scale > 0.0 {
        scale.clamp(1e-3, 1e6)
    } else {
        1.0
    }
}

impl Clock {
    /// A clock starting at the current time, running `scale` times faster
    /// than real time. A scale that is not a positive finite number is 1.
    pub fn new(scale: f64) -> Self {
        Self::starting_at(OffsetDateTime::now_utc(), scale)
    }

    /// A clock starting at `start`. The scale is kept within 0.001 to 1 000 000.
    pub fn starting_at(start: OffsetDateTime, scale: f64) -> Self {
        let scale = clamp_scale(scale);
        Self {
            inner: Arc::new(Inner {
                start,
                started: Instant::now(),
                scale,
                advanced: Mutex::new(Duration::ZERO),
                jumped: Notify::new(),
            }),
        }
    }

    /// Emulated seconds per real second.
    pub fn scale(&self) -> f64 {
        self.inner.scale
    }

    /// The emulated time now. It runs at most a century past the start
    /// (then it stands still), far inside what dates can hold.
    pub fn now(&self) -> OffsetDateTime {
        let real = self.inner.started.elapsed().as_secs_f64();
        let scaled = Duration::seconds_f64((real * self.inner.scale).min(MAX_SPAN_SECS));
        let total = scaled.saturating_add(self.advanced());
        self.inner.start + total.min(Duration::seconds_f64(MAX_SPAN_SECS))
    }

    fn advanced(&self) -> Duration {
        *self
            .inner
            .advanced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Moves the clock forward by `by` at once; waits due by then end.
    /// Negative durations are ignored: emulated time never runs backwards.
    pub fn advance(&self, by: Duration) {
        if by <= Duration::ZERO {
            return;
        }
        {
            let mut advanced = self
                .inner
                .advanced
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *advanced = advanced.saturating_add(by);
        }
        self.inner.jumped.notify_waiters();
    }

    /// The real time an emulated span takes.
    pub fn real(&self, emulated: Duration) -> StdDuration {
        if emulated <= Duration::ZERO {
            return StdDuration::ZERO;
        }
        let secs = emulated.as_seconds_f64() / self.inner.scale;
        StdDuration::try_from_secs_f64(secs)
            .unwrap_or(MAX_REAL_WAIT)
            .min(MAX_REAL_WAIT)
    }

    /// Waits until the emulated time is `deadline`. Always yields once, so a
    /// loop around a deadline already past cannot starve the runtime.
    pub async fn sleep_until(&self, deadline: OffsetDateTime) {
        tokio::task::yield_now().await;
        loop {
            let jumped = self.inner.jumped.notified();
            tokio::pin!(jumped);
            jumped.as_mut().enable();
            let now = self.now();
            if now >= deadline {
                return;
            }
            // A millisecond more, so the wake-up is not a hair early.
            let wait = self.real(deadline - now) + StdDuration::from_millis(1);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut jumped => {}
            }
        }
    }

    /// Waits for an emulated span.
    pub async fn sleep(&self, span: Duration) {
        self.sleep_until(self.now() + span).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scaled_waits_are_short_and_advance_wakes_sleepers() {
        let clock = Clock::new(3600.0);
        let start = clock.now();
        // Two emulated hours at 3600x take about two real seconds; advancing wakes it now.
        let sleeper = {
            let clock = clock.clone();
            tokio::spawn(async move { clock.sleep(Duration::hours(2)).await })
        };
        tokio::task::yield_now().await;
        clock.advance(Duration::hours(3));
        sleeper.await.unwrap();
        assert!(clock.now() - start >= Duration::hours(3));
        clock.advance(-Duration::hours(10));
        assert!(clock.now() - start >= Duration::hours(3), "never backwards");
    }

    #[test]
    fn real_spans_and_bad_scales() {
        let clock = Clock::new(60.0);
        assert_eq!(clock.real(Duration::minutes(1)), StdDuration::from_secs(1));
        assert_eq!(clock.real(-Duration::minutes(1)), StdDuration::ZERO);
        assert_eq!(clock.real(Duration::days(100_000)), MAX_REAL_WAIT);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!((Clock::new(bad).scale() - 1.0).abs() < f64::EPSILON);
        }
        assert!((Clock::new(1e300).scale() - 1e6).abs() < f64::EPSILON);
        // Advancing without bound neither panics nor leaves the century.
        let start = OffsetDateTime::now_utc();
        let clock = Clock::starting_at(start, 1.0);
        for _ in 0..1000 {
            clock.advance(Duration::seconds(1_000_000_000));
        }
        assert!(clock.now() - start <= Duration::days(36_525));
    }
}
