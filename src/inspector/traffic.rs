//! What arrived per subscription, and the "silence" warning: a
//! subscription that used to receive and has been quiet for much longer
//! than usual. Graph gives no signal when it stops sending (a dropped
//! endpoint, a subscription deleted elsewhere, an expired token): the gap is
//! the only sign.

use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// How many lifecycle events a subscription's traffic keeps.
const LIFECYCLE_KEPT: usize = 5;
/// Gaps seen before a subscription's usual gap is trusted.
const MIN_GAPS: u32 = 5;
/// A silence counts when it is this many times the usual gap…
const QUIET_FACTOR: f64 = 10.0;
/// …and at least this long.
const QUIET_FLOOR: Duration = Duration::minutes(15);

/// What arrived for one subscription.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Traffic {
    /// Accepted items.
    pub items: u64,
    /// When the first arrived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub first_at: Option<OffsetDateTime>,
    /// When the last arrived.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_at: Option<OffsetDateTime>,
    /// The usual gap between deliveries, in seconds (a moving average of
    /// the gaps; gaps under a second are one burst and don't count).
    pub usual_gap_secs: Option<f64>,
    /// Gaps counted in the average.
    pub gaps: u32,
    /// The last lifecycle events: the event and when it arrived.
    pub lifecycle: Vec<(String, String)>,
}

/// A subscription gone quiet.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Quiet {
    /// The subscription.
    pub subscription_id: String,
    /// Seconds since its last item.
    pub silent_secs: f64,
    /// Its usual gap, in seconds.
    pub usual_gap_secs: f64,
}

impl Traffic {
    /// Counts an item that arrived at `at`.
    pub(crate) fn arrived(&mut self, at: OffsetDateTime, lifecycle: Option<&str>) {
        self.items += 1;
        if let Some(last) = self.last_at {
            let gap = (at - last).as_seconds_f64();
            if gap >= 1.0 {
                // An exponential moving average: recent habits count most.
                self.usual_gap_secs = Some(match self.usual_gap_secs {
                    Some(usual) => usual * 0.8 + gap * 0.2,
                    None => gap,
                });
                self.gaps = self.gaps.saturating_add(1);
            }
        }
        self.first_at.get_or_insert(at);
        self.last_at = Some(at);
        if let Some(event) = lifecycle {
            if self.lifecycle.len() == LIFECYCLE_KEPT {
                self.lifecycle.remove(0);
            }
            let when = at
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            self.lifecycle
                .push((event.chars().take(64).collect(), when));
        }
    }

    /// Whether, at `now`, the subscription has been quiet for more than ten
    /// times its usual gap and at least 15 minutes, once at least five gaps
    /// have told what usual is.
    pub fn quiet_at(&self, subscription_id: &str, now: OffsetDateTime) -> Option<Quiet> {
        let (usual, last) = (self.usual_gap_secs?, self.last_at?);
        if self.gaps < MIN_GAPS {
            return None;
        }
        let silent = (now - last).as_seconds_f64();
        let threshold = (usual * QUIET_FACTOR).max(QUIET_FLOOR.as_seconds_f64());
        (silent > threshold).then(|| Quiet {
            subscription_id: subscription_id.to_owned(),
            silent_secs: silent,
            usual_gap_secs: usual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_subscription_that_stops_is_quiet() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let mut traffic = Traffic::default();
        for minute in 0..10 {
            traffic.arrived(start + Duration::minutes(minute * 2), None);
        }
        let last = start + Duration::minutes(18);
        assert_eq!(traffic.gaps, 9);
        assert!((traffic.usual_gap_secs.unwrap() - 120.0).abs() < 1e-6);
        // Ten gaps of two minutes is 20 minutes: quiet after that.
        assert!(
            traffic
                .quiet_at("s", last + Duration::minutes(19))
                .is_none()
        );
        let quiet = traffic.quiet_at("s", last + Duration::minutes(21)).unwrap();
        assert_eq!(quiet.subscription_id, "s");
        assert!((quiet.silent_secs - 1260.0).abs() < 1e-6);
    }

    #[test]
    fn bursts_and_new_subscriptions_are_not_judged() {
        let start = OffsetDateTime::UNIX_EPOCH;
        let mut traffic = Traffic::default();
        for ms in 0..50 {
            traffic.arrived(start + Duration::milliseconds(ms * 10), Some("missed"));
        }
        assert_eq!(traffic.gaps, 0, "a burst is one arrival");
        assert_eq!(traffic.lifecycle.len(), LIFECYCLE_KEPT);
        assert!(traffic.quiet_at("s", start + Duration::days(3)).is_none());
        // Frequent traffic still waits the 15-minute floor.
        for second in 1..=6 {
            traffic.arrived(start + Duration::seconds(second * 2), None);
        }
        let last = traffic.last_at.unwrap();
        assert!(
            traffic
                .quiet_at("s", last + Duration::minutes(14))
                .is_none()
        );
        assert!(
            traffic
                .quiet_at("s", last + Duration::minutes(16))
                .is_some()
        );
    }
}
