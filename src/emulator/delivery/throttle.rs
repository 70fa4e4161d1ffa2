//! The throttling of slow endpoints (Microsoft Learn, "Receive change
//! notifications through webhooks", throttling,
//! <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks#throttling>):
//! a URL's responses are counted in windows, and the shares over the
//! timeouts move it between the normal, slow and drop states.

use std::time::Duration;

use time::OffsetDateTime;

use super::{EndpointInner, EndpointState, MAX_HISTORY, StateChange};
use crate::emulator::clock::emulated;

/// The throttling rules of slow endpoints (Microsoft Learn, "Receive change notifications through webhooks", <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks>).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Throttling {
    /// The window responses are counted in (10 minutes).
    pub window: Duration,
    /// Share of responses over the first timeout that makes an endpoint slow (0.10).
    pub slow_ratio: f64,
    /// Share of responses over the retry timeout that makes it drop (0.15).
    pub drop_ratio: f64,
    /// Responses a window needs before a share counts: 1, since the
    /// current wording of the throttling section states the shares ("more
    /// than 10% of responses … in a 10-minute window") with no minimum
    /// (Microsoft Learn, "Receive change notifications through webhooks",
    /// <https://learn.microsoft.com/graph/change-notifications-delivery-webhooks#throttling>).
    /// An earlier wording counted "after the endpoint receives 100
    /// notifications": set 100 for it.
    pub min_samples: u32,
    /// How long a slow endpoint's new notifications wait (10 minutes).
    pub slow_delay: Duration,
    /// How long a dropping endpoint loses notifications (10 minutes); it is
    /// then probed as a slow one until a window is under the slow share.
    pub drop_period: Duration,
}

impl Default for Throttling {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(600),
            slow_ratio: 0.10,
            drop_ratio: 0.15,
            min_samples: 1,
            slow_delay: Duration::from_secs(600),
            drop_period: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct Window {
    pub(super) start: Option<OffsetDateTime>,
    pub(super) responses: u32,
    pub(super) over_first: u32,
    pub(super) over_retry: u32,
}

impl EndpointInner {
    pub(super) fn enter(
        &mut self,
        state: EndpointState,
        now: OffsetDateTime,
        throttling: &Throttling,
    ) {
        if self.state == state {
            return;
        }
        tracing::info!(from = ?self.state, to = ?state, "endpoint throttling state");
        self.state = state;
        self.drop_until =
            (state == EndpointState::Drop).then(|| now + emulated(throttling.drop_period));
        if state == EndpointState::Drop {
            self.missed_sent.clear();
        }
        if self.history.len() >= MAX_HISTORY {
            self.history.remove(1);
        }
        self.history.push(StateChange { time: now, state });
    }

    /// Starts a new window when the current one is over; a slow endpoint
    /// whose closing window was under the slow share is normal again.
    pub(super) fn roll_window(&mut self, now: OffsetDateTime, throttling: &Throttling) {
        let start = *self.window.start.get_or_insert(now);
        if now < start + emulated(throttling.window) {
            return;
        }
        let w = &self.window;
        if self.state == EndpointState::Slow
            && w.responses > 0
            && f64::from(w.over_first) <= throttling.slow_ratio * f64::from(w.responses)
        {
            self.enter(EndpointState::Normal, now, throttling);
        }
        self.window = Window {
            start: Some(now),
            ..Window::default()
        };
    }

    pub(super) fn record_sample(
        &mut self,
        now: OffsetDateTime,
        over_first: bool,
        over_retry: bool,
        throttling: &Throttling,
    ) {
        self.roll_window(now, throttling);
        let w = &mut self.window;
        w.responses += 1;
        w.over_first += u32::from(over_first);
        w.over_retry += u32::from(over_retry);
        if w.responses < throttling.min_samples.max(1) {
            return;
        }
        let total = f64::from(w.responses);
        if f64::from(w.over_retry) > throttling.drop_ratio * total {
            if self.state != EndpointState::Drop {
                self.enter(EndpointState::Drop, now, throttling);
            }
        } else if self.state == EndpointState::Normal
            && f64::from(w.over_first) > throttling.slow_ratio * total
        {
            self.enter(EndpointState::Slow, now, throttling);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use time::macros::datetime;

    use super::*;

    fn inner() -> EndpointInner {
        EndpointInner {
            queue: Vec::new(),
            state: EndpointState::Normal,
            drop_until: None,
            window: Window::default(),
            in_flight: 0,
            history: Vec::new(),
            missed_sent: HashSet::new(),
        }
    }

    #[test]
    fn by_default_one_slow_answer_in_a_window_counts() {
        let throttling = Throttling::default();
        let t0 = datetime!(2026-05-01 12:00 UTC);
        let mut e = inner();
        e.record_sample(t0, false, false, &throttling);
        assert_eq!(e.state, EndpointState::Normal, "0 of 1 over 3 s");
        e.record_sample(t0, true, false, &throttling);
        assert_eq!(e.state, EndpointState::Slow, "1 of 2 over 3 s: over 10 %");
    }

    #[test]
    fn throttling_states_follow_the_shares_of_a_window() {
        let throttling = Throttling {
            min_samples: 10,
            ..Throttling::default()
        };
        let t0 = datetime!(2026-05-01 12:00 UTC);
        let mut e = inner();
        // 9 samples, all slow: below the minimum, nothing happens.
        for _ in 0..9 {
            e.record_sample(t0, true, false, &throttling);
        }
        assert_eq!(e.state, EndpointState::Normal);
        e.record_sample(t0, false, false, &throttling);
        assert_eq!(e.state, EndpointState::Slow, "9 of 10 over 3 s");
        // Two retries over 10 s of 12: more than 15 %.
        e.record_sample(t0, true, true, &throttling);
        assert_eq!(e.state, EndpointState::Slow, "1 of 11 over 10 s");
        e.record_sample(t0, true, true, &throttling);
        assert_eq!(e.state, EndpointState::Drop);
        assert_eq!(e.drop_until, Some(t0 + time::Duration::minutes(10)));

        // A new window of fast answers: a slow endpoint becomes normal when it rolls.
        let mut e = inner();
        e.state = EndpointState::Slow;
        e.record_sample(t0, false, false, &throttling);
        e.roll_window(t0 + time::Duration::minutes(10), &throttling);
        assert_eq!(e.state, EndpointState::Normal);
        // A window still over the share keeps it slow.
        let mut e = inner();
        e.state = EndpointState::Slow;
        e.record_sample(t0, true, false, &throttling);
        e.roll_window(t0 + time::Duration::minutes(10), &throttling);
        assert_eq!(e.state, EndpointState::Slow);
    }
}
