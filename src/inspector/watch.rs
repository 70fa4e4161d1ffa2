//! The throttle-risk watch: the share of this receiver's answers that Graph
//! would count against it, over the rolling window Graph uses.
//!
//! Graph measures each notification URL over 10-minute windows. An endpoint
//! where more than 10 % of responses take longer than 3 seconds is *slow*:
//! its new notifications wait 10 minutes. One where more than 15 % take
//! longer than 10 seconds is *dropped*: its notifications are discarded for
//! 10 minutes, and they can't be recovered (Microsoft Learn, "Receive change
//! notifications through webhooks", Throttling,
//! <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks#throttling>;
//! the older wording of the page counts a window only once it holds 100
//! notifications). The watch counts the same two shares of its own answers,
//! in 60 buckets of 10 seconds that each answer bumps with atomic adds, so
//! recording never takes a lock on the ack path.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Graph's first timeout: an answer slower than this counts as slow.
pub const SLOW: Duration = Duration::from_secs(3);
/// Graph's retry timeout: an answer slower than this counts towards drop.
pub const VERY_SLOW: Duration = Duration::from_secs(10);
/// Share of slow answers that makes Graph delay new notifications.
pub const SLOW_SHARE: f64 = 0.10;
/// Share of very slow answers that makes Graph drop notifications.
pub const DROP_SHARE: f64 = 0.15;
/// The share, as a part of Graph's threshold, at which the watch warns.
pub const NEARING: f64 = 0.5;

const BUCKETS: usize = 60;
const BUCKET: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Bucket {
    /// Which 10-second slot (since the watch started) the counts belong to.
    slot: AtomicU64,
    answers: AtomicU64,
    slow: AtomicU64,
    very_slow: AtomicU64,
}

/// What Graph would make of the last 10 minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum Risk {
    /// Both shares well under Graph's thresholds (or too few answers to count).
    Ok,
    /// A share is at least half its threshold.
    Nearing,
    /// Over 10 % of answers slower than 3 s: Graph delays new notifications 10 minutes.
    Delayed,
    /// Over 15 % of answers slower than 10 s: Graph drops notifications for 10 minutes.
    Dropping,
}

impl Risk {
    fn level(self) -> u8 {
        match self {
            Risk::Ok => 0,
            Risk::Nearing => 1,
            Risk::Delayed => 2,
            Risk::Dropping => 3,
        }
    }

    /// `ok`, `nearing`, `delayed` or `dropping`.
    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Ok => "ok",
            Risk::Nearing => "nearing",
            Risk::Delayed => "delayed",
            Risk::Dropping => "dropping",
        }
    }
}

/// The two shares over the window, and what they mean.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct ThrottleRisk {
    /// Answers in the window.
    pub answers: u64,
    /// Answers slower than 3 s.
    pub slow: u64,
    /// Answers slower than 10 s.
    pub very_slow: u64,
    /// `slow / answers` (0 without answers).
    pub slow_share: f64,
    /// `very_slow / answers`.
    pub very_slow_share: f64,
    /// The verdict.
    pub risk: Risk,
}

/// Counts answers by latency over a rolling 10 minutes.
pub struct Watch {
    started: Instant,
    buckets: [Bucket; BUCKETS],
    min_answers: AtomicU64,
    /// The verdict last logged, as [`Risk::level`].
    logged: AtomicU8,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("min_answers", &self.min_answers.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// A watch that judges a window once it holds `min_answers` answers
    /// (Graph's older wording: 100).
    pub fn new(min_answers: u64) -> Self {
        Self {
            started: Instant::now(),
            buckets: std::array::from_fn(|_| Bucket::default()),
            min_answers: AtomicU64::new(min_answers),
            logged: AtomicU8::new(Risk::Ok.level()),
        }
    }

    /// Judges a window once it holds `min_answers` answers.
    pub fn set_min_answers(&self, min_answers: u64) {
        self.min_answers.store(min_answers, Ordering::Relaxed);
    }

    fn slot(&self, at: Instant) -> u64 {
        // Slot 0 means "never used", so slots start at 1.
        (at.saturating_duration_since(self.started).as_secs() / BUCKET.as_secs()) + 1
    }

    /// Counts one answer that took `latency`, answered at `at`.
    pub fn record_at(&self, at: Instant, latency: Duration) {
        let slot = self.slot(at);
        let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
        let seen = bucket.slot.load(Ordering::Acquire);
        if seen != slot
            && bucket
                .slot
                .compare_exchange(seen, slot, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This answer opened the slot: the old counts are 10 minutes old.
            // An answer of the same slot counted between the exchange and
            // these stores is lost, which a share over minutes can afford.
            bucket.answers.store(0, Ordering::Relaxed);
            bucket.slow.store(0, Ordering::Relaxed);
            bucket.very_slow.store(0, Ordering::Relaxed);
            // Once per slot that sees an answer: log what changed.
            self.log_change(self.risk_at(at));
        }
        bucket.answers.fetch_add(1, Ordering::Relaxed);
        if latency > SLOW {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
        if latency > VERY_SLOW {
            bucket.very_slow.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one answer that took `latency`, answered now.
    pub fn record(&self, latency: Duration) {
        self.record_at(Instant::now(), latency);
    }

    /// The shares over the 10 minutes before `at`.
    pub fn risk_at(&self, at: Instant) -> ThrottleRisk {
        let now = self.slot(at);
        let oldest = now.saturating_sub(BUCKETS as u64 - 1);
        let (mut answers, mut slow, mut very_slow) = (0, 0, 0);
        for bucket in &self.buckets {
            let slot = bucket.slot.load(Ordering::Acquire);
            if slot >= oldest.max(1) && slot <= now {
                answers += bucket.answers.load(Ordering::Relaxed);
                slow += bucket.slow.load(Ordering::Relaxed);
                very_slow += bucket.very_slow.load(Ordering::Relaxed);
            }
        }
        let share = |n: u64| {
            if answers == 0 {
                0.0
            } else {
                n as f64 / answers as f64
            }
        };
        let (slow_share, very_slow_share) = (share(slow), share(very_slow));
        let risk = if answers < self.min_answers.load(Ordering::Relaxed).max(1) {
            Risk::Ok
        } else if very_slow_share > DROP_SHARE {
            Risk::Dropping
        } else if slow_share > SLOW_SHARE {
            Risk::Delayed
        } else if slow_share >= SLOW_SHARE * NEARING || very_slow_share >= DROP_SHARE * NEARING {
            Risk::Nearing
        } else {
            Risk::Ok
        };
        ThrottleRisk {
            answers,
            slow,
            very_slow,
            slow_share,
            very_slow_share,
            risk,
        }
    }

    /// Logs the verdict when it differs from the one logged last.
    fn log_change(&self, now: ThrottleRisk) {
        let before = self.logged.swap(now.risk.level(), Ordering::AcqRel);
        if before == now.risk.level() {
            return;
        }
        let (slow, very_slow) = (now.slow_share * 100.0, now.very_slow_share * 100.0);
        match now.risk {
            Risk::Ok => tracing::info!(
                answers = now.answers,
                "throttle risk back to ok: {slow:.1} % of answers over 3 s, {very_slow:.1} % over 10 s in 10 minutes"
            ),
            Risk::Nearing => tracing::warn!(
                answers = now.answers,
                "nearing Graph's throttling: {slow:.1} % of answers over 3 s (Graph delays at 10 %), \
                 {very_slow:.1} % over 10 s (Graph drops at 15 %) in 10 minutes; answer faster \
                 (is the store slow? the handler runs after the ack)"
            ),
            Risk::Delayed => tracing::error!(
                answers = now.answers,
                "Graph is likely delaying new notifications 10 minutes: {slow:.1} % of answers \
                 over 3 s in 10 minutes (over 10 %)"
            ),
            Risk::Dropping => tracing::error!(
                answers = now.answers,
                "Graph is likely dropping notifications for 10 minutes, and they can't be \
                 recovered: {very_slow:.1} % of answers over 10 s in 10 minutes (over 15 %); a \
                 resync catches up"
            ),
        }
    }

    /// The shares over the last 10 minutes.
    pub fn risk(&self) -> ThrottleRisk {
        self.risk_at(Instant::now())
    }

    /// The window's 10-second slots, oldest first, for a chart.
    pub fn slots_at(&self, at: Instant) -> Vec<Slot> {
        let now = self.slot(at);
        (0..BUCKETS as u64)
            .rev()
            .filter_map(|ago| now.checked_sub(ago).filter(|s| *s >= 1).map(|s| (ago, s)))
            .map(|(ago, slot)| {
                let bucket = &self.buckets[(slot % BUCKETS as u64) as usize];
                let current = bucket.slot.load(Ordering::Acquire) == slot;
                let count = |n: &AtomicU64| {
                    if current {
                        n.load(Ordering::Relaxed)
                    } else {
                        0
                    }
                };
                Slot {
                    secs_ago: ago * BUCKET.as_secs(),
                    answers: count(&bucket.answers),
                    slow: count(&bucket.slow),
                    very_slow: count(&bucket.very_slow),
                }
            })
            .collect()
    }
}

/// One 10-second slot of the window.
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Slot {
    /// How long ago the slot began, in seconds (rounded to the slot).
    pub secs_ago: u64,
    /// Answers in it.
    pub answers: u64,
    /// Answers slower than 3 s.
    pub slow: u64,
    /// Answers slower than 10 s.
    pub very_slow: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(5);

    fn fill(watch: &Watch, at: Instant, fast: u32, slow: u32, very_slow: u32) {
        for _ in 0..fast {
            watch.record_at(at, FAST);
        }
        for _ in 0..slow {
            watch.record_at(at, Duration::from_secs(4));
        }
        for _ in 0..very_slow {
            watch.record_at(at, Duration::from_secs(11));
        }
    }

    #[test]
    fn shares_follow_graphs_thresholds() {
        let watch = Watch::new(100);
        let t = watch.started;
        fill(&watch, t, 96, 4, 0);
        let risk = watch.risk_at(t);
        assert_eq!((risk.answers, risk.slow, risk.very_slow), (100, 4, 0));
        assert_eq!(risk.risk, Risk::Ok);
        fill(&watch, t, 0, 2, 0); // 6 of 102 slow: over half of 10 %
        assert_eq!(watch.risk_at(t).risk, Risk::Nearing);
        fill(&watch, t, 0, 6, 0); // 12 of 108
        assert_eq!(watch.risk_at(t).risk, Risk::Delayed);
        fill(&watch, t, 0, 0, 20); // 20 of 128 over 10 s
        let risk = watch.risk_at(t);
        assert_eq!(risk.risk, Risk::Dropping);
        assert_eq!(risk.slow, 32, "an answer over 10 s is over 3 s too");
    }

    #[test]
    fn too_few_answers_are_not_judged() {
        let watch = Watch::new(100);
        let t = watch.started;
        fill(&watch, t, 0, 0, 99);
        assert_eq!(watch.risk_at(t).risk, Risk::Ok);
        assert_eq!(watch.risk_at(t).very_slow_share, 1.0);
        fill(&watch, t, 0, 0, 1);
        assert_eq!(watch.risk_at(t).risk, Risk::Dropping);
    }

    #[test]
    fn answers_leave_the_window_after_ten_minutes() {
        let watch = Watch::new(1);
        let t = watch.started;
        fill(&watch, t, 0, 10, 0);
        let later = t + Duration::from_secs(300);
        fill(&watch, later, 10, 0, 0);
        let risk = watch.risk_at(later);
        assert_eq!((risk.answers, risk.slow), (20, 10));
        // Slot of `t` leaves once 60 newer slots have begun.
        let gone = t + Duration::from_secs(600);
        let risk = watch.risk_at(gone);
        assert_eq!((risk.answers, risk.slow), (10, 0));
        // A bucket reused for a new slot forgets its old counts.
        fill(&watch, gone, 1, 0, 0);
        let risk = watch.risk_at(gone);
        assert_eq!((risk.answers, risk.slow), (11, 0));
        assert_eq!(watch.risk_at(gone + Duration::from_secs(3600)).answers, 0);
        let slots = watch.slots_at(gone);
        assert_eq!(slots.len(), 60);
        assert_eq!(slots.iter().map(|s| s.answers).sum::<u64>(), 11);
        assert_eq!(slots.last().map(|s| (s.secs_ago, s.answers)), Some((0, 1)));
        // Before a full window has passed, only the slots since the start.
        assert_eq!(watch.slots_at(t + Duration::from_secs(25)).len(), 3);
    }

    #[test]
    fn concurrent_recording_counts_every_answer() {
        let watch = std::sync::Arc::new(Watch::new(1));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let watch = watch.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        watch.record(FAST);
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        // The threads may straddle a slot boundary, which may lose a few.
        let answers = watch.risk().answers;
        assert!(answers > 39_000 && answers <= 40_000, "{answers}");
    }
}
