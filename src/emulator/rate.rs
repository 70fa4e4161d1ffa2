//! Graph's request limits on the subscriptions API, counted in sliding
//! windows per app per tenant, per tenant and per app.
//!
//! Microsoft Learn, "Microsoft Graph service-specific throttling limits",
//! section "Subscription service limits"
//! (<https://learn.microsoft.com/graph/throttling-limits#subscription-service-limits>):
//!
//! | Request type             | Per app, all tenants | Per tenant, all apps | Per app per tenant |
//! |--------------------------|----------------------|----------------------|--------------------|
//! | POST, PUT, DELETE, PATCH | 10 000 per 20 s      | 5 000 per 20 s       | 2 000 per 20 s     |
//! | Any                      | 10 000 per 20 s      | 5 000 per 20 s       | 2 000 per 20 s     |
//!
//! "The first limit to be reached triggers throttling behavior": a request
//! is admitted only when every limit it falls under has room, and then
//! counts against all of them; a refused request counts against none.
//!
//! **Sliding windows**, not fixed ones: "2 000 requests per 20 seconds" is
//! read as "in no 20 seconds more than 2 000", which a fixed window breaks
//! at its edges (2 000 just before and 2 000 just after a boundary). A
//! sliding log also gives an honest `Retry-After`: the time until the oldest
//! counted request leaves the window, after which the next one passes. Each
//! window holds at most its limit of instants.
//!
//! **Real time**, not the emulated [`Clock`](super::Clock): these limits
//! measure the client's own request rate, which the time scale does not
//! speed up, and the client waits out `Retry-After` in real seconds. Under
//! a time scale of 3600, emulated windows would last 5.6 ms and let a client
//! through at a rate Graph would refuse. [`Clock::advance`](super::Clock::advance)
//! leaves them alone; tests shorten [`ApiLimits::window`] instead.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Graph's throttling limits on `/subscriptions`, per window: Microsoft's
/// numbers by [`Default`] (Microsoft Learn, "Microsoft Graph
/// service-specific throttling limits", Subscription service limits,
/// <https://learn.microsoft.com/graph/throttling-limits#subscription-service-limits>);
/// lower them for tests
/// ([`EmulatorBuilder::api_limits`](super::EmulatorBuilder::api_limits)).
///
/// A request passes only when every limit it falls under has room, and
/// then counts against all of them; a refused one (`429`, `Retry-After`:
/// the whole seconds until the window has room) counts against none. The
/// windows slide, so no 20 s ever hold more than a limit, and run on real
/// time, not the emulated [`Clock`](super::Clock): they measure the
/// client's own pace, and the client waits `Retry-After` out in real
/// seconds.
///
/// Writes are `POST`, `PUT`, `PATCH` and `DELETE` (create, update, delete,
/// reauthorize); requests are all of them, reads included, so a write
/// counts against both rows. Only authenticated requests count: a request
/// without a valid token gets its `401` unthrottled.
///
/// ```
/// use std::time::Duration;
/// use msgraph_webhooks::emulator::ApiLimits;
///
/// let graph = ApiLimits::default();
/// assert_eq!(graph.window, Duration::from_secs(20));
/// assert_eq!(graph.writes_per_app_per_tenant, 2000);
///
/// let mut tight = ApiLimits::default();
/// tight.window = Duration::from_secs(1);
/// tight.writes_per_app_per_tenant = 2;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ApiLimits {
    /// Whether the limits are enforced at all.
    pub enabled: bool,
    /// The window every limit counts in (Graph: 20 s).
    pub window: Duration,
    /// Writes of one app in one tenant (Graph: 2 000).
    pub writes_per_app_per_tenant: u32,
    /// Writes of all apps in one tenant (Graph: 5 000).
    pub writes_per_tenant: u32,
    /// Writes of one app across all tenants (Graph: 10 000).
    pub writes_per_app: u32,
    /// Requests of any method of one app in one tenant (Graph: 2 000).
    pub requests_per_app_per_tenant: u32,
    /// Requests of all apps in one tenant (Graph: 5 000).
    pub requests_per_tenant: u32,
    /// Requests of one app across all tenants (Graph: 10 000).
    pub requests_per_app: u32,
}

impl Default for ApiLimits {
    /// Microsoft's numbers: 2 000 per app per tenant, 5 000 per tenant,
    /// 10 000 per app, for writes and for all requests, per 20 s.
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(20),
            writes_per_app_per_tenant: 2000,
            writes_per_tenant: 5000,
            writes_per_app: 10_000,
            requests_per_app_per_tenant: 2000,
            requests_per_tenant: 5000,
            requests_per_app: 10_000,
        }
    }
}

impl ApiLimits {
    /// No throttling of the subscriptions API.
    pub fn unlimited() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }
}

/// What a request is, for the limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `GET` (and anything else that changes nothing).
    Read,
    /// `POST`, `PUT`, `PATCH`, `DELETE`.
    Write,
}

/// The limit a refused request ran into, and when to come back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// `writes` or `requests`.
    pub(crate) row: &'static str,
    /// `app+tenant`, `tenant` or `app`.
    pub(crate) scope: &'static str,
    /// The tenant or app id (or both, `tenant+app`) it counts for.
    pub(crate) identifier: String,
    /// Whole seconds until the request would pass (at least 1).
    pub(crate) retry_after: u64,
}

/// The windows of every app and tenant seen.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    windows: Mutex<Windows>,
    throttled: AtomicU64,
}

#[derive(Debug, Default)]
struct Windows {
    by_key: HashMap<Key, VecDeque<Instant>>,
    /// Admissions since the last sweep of empty windows.
    since_sweep: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    row: &'static str,
    scope: &'static str,
    identifier: String,
}

/// Admissions between two sweeps of windows that emptied.
const SWEEP_EVERY: u32 = 1024;

impl Limiter {
    /// Admits (and counts) a request of `app_id` in `tenant_id`, or says
    /// which limit refuses it.
    pub(crate) fn admit(
        &self,
        limits: &ApiLimits,
        kind: Kind,
        tenant_id: &str,
        app_id: &str,
        now: Instant,
    ) -> Result<(), Refusal> {
        if !limits.enabled {
            return Ok(());
        }
        let tenant = tenant_id.to_ascii_lowercase();
        let app = app_id.to_ascii_lowercase();
        let key = |row, scope, identifier: &str| Key {
            row,
            scope,
            identifier: identifier.to_owned(),
        };
        let both = format!("{tenant}+{app}");
        let mut applicable = vec![
            (
                key("requests", "app+tenant", &both),
                limits.requests_per_app_per_tenant,
            ),
            (
                key("requests", "tenant", &tenant),
                limits.requests_per_tenant,
            ),
            (key("requests", "app", &app), limits.requests_per_app),
        ];
        if kind == Kind::Write {
            applicable.extend([
                (
                    key("writes", "app+tenant", &both),
                    limits.writes_per_app_per_tenant,
                ),
                (key("writes", "tenant", &tenant), limits.writes_per_tenant),
                (key("writes", "app", &app), limits.writes_per_app),
            ]);
        }
        let window = limits.window;
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut refusal: Option<Refusal> = None;
        for (key, limit) in &applicable {
            let limit = *limit as usize;
            let times = windows.by_key.get_mut(key);
            let counted = match times {
                Some(times) => {
                    while times
                        .front()
                        .is_some_and(|t| now.saturating_duration_since(*t) >= window)
                    {
                        times.pop_front();
                    }
                    times.len()
                }
                None => 0,
            };
            if counted >= limit {
                // Room again when the oldest counted request leaves the
                // window; a limit of 0 never has room (a window from now).
                let oldest = windows.by_key.get(key).and_then(VecDeque::front);
                let wait = match oldest {
                    Some(oldest) if limit > 0 => {
                        window.saturating_sub(now.saturating_duration_since(*oldest))
                    }
                    _ => window,
                };
                refusal = later(refusal, key, wait);
            }
        }
        if let Some(refusal) = refusal {
            self.throttled.fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        for (key, limit) in applicable {
            let times = windows.by_key.entry(key).or_default();
            times.push_back(now);
            // Admitted, so below the limit; a lowered limit never leaves more.
            while times.len() > limit as usize {
                times.pop_front();
            }
        }
        windows.since_sweep += 1;
        if windows.since_sweep >= SWEEP_EVERY {
            windows.since_sweep = 0;
            windows.by_key.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < window)
            });
        }
        Ok(())
    }

    /// Requests answered `429` so far.
    pub(crate) fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

/// Of two refusals, the one that lasts longer: a request passes only when
/// every limit has room.
fn later(current: Option<Refusal>, key: &Key, wait: Duration) -> Option<Refusal> {
    let retry_after = whole_seconds(wait);
    match current {
        Some(current) if current.retry_after >= retry_after => Some(current),
        _ => Some(Refusal {
            row: key.row,
            scope: key.scope,
            identifier: key.identifier.clone(),
            retry_after,
        }),
    }
}

/// `Retry-After` is whole seconds: rounded up, so waiting it out is enough,
/// and at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tight() -> ApiLimits {
        ApiLimits {
            window: Duration::from_secs(20),
            writes_per_app_per_tenant: 2,
            writes_per_tenant: 3,
            writes_per_app: 100,
            requests_per_app_per_tenant: 4,
            requests_per_tenant: 100,
            requests_per_app: 100,
            ..ApiLimits::default()
        }
    }

    #[test]
    fn writes_slide_out_of_the_window_and_retry_after_says_when() {
        let limiter = Limiter::default();
        let limits = tight();
        let start = Instant::now();
        let at = |secs: f64| start + Duration::from_secs_f64(secs);
        limiter
            .admit(&limits, Kind::Write, "t", "a", at(0.0))
            .unwrap();
        limiter
            .admit(&limits, Kind::Write, "t", "a", at(5.5))
            .unwrap();
        let refused = limiter
            .admit(&limits, Kind::Write, "t", "a", at(6.0))
            .unwrap_err();
        assert_eq!(
            (refused.row, refused.scope, refused.retry_after),
            ("writes", "app+tenant", 14)
        );
        assert_eq!(refused.identifier, "t+a");
        // Refused requests count against nothing: the first one leaves at 20 s.
        assert!(
            limiter
                .admit(&limits, Kind::Write, "t", "a", at(19.9))
                .is_err()
        );
        limiter
            .admit(&limits, Kind::Write, "t", "a", at(20.0))
            .unwrap();
        assert_eq!(limiter.throttled(), 2);
    }

    #[test]
    fn reads_have_their_own_limit_and_writes_count_against_it() {
        let limiter = Limiter::default();
        let limits = tight();
        let now = Instant::now();
        for _ in 0..2 {
            limiter.admit(&limits, Kind::Write, "t", "a", now).unwrap();
        }
        assert!(limiter.admit(&limits, Kind::Write, "t", "a", now).is_err());
        for _ in 0..2 {
            limiter.admit(&limits, Kind::Read, "t", "a", now).unwrap();
        }
        let refused = limiter
            .admit(&limits, Kind::Read, "t", "a", now)
            .unwrap_err();
        assert_eq!((refused.row, refused.scope), ("requests", "app+tenant"));
        assert_eq!(refused.retry_after, 20);
    }

    #[test]
    fn the_tenant_limit_spans_apps_and_ids_ignore_case() {
        let limiter = Limiter::default();
        let limits = tight();
        let now = Instant::now();
        limiter.admit(&limits, Kind::Write, "T", "a", now).unwrap();
        limiter.admit(&limits, Kind::Write, "t", "A", now).unwrap();
        limiter.admit(&limits, Kind::Write, "t", "b", now).unwrap();
        let refused = limiter
            .admit(&limits, Kind::Write, "t", "c", now)
            .unwrap_err();
        assert_eq!(
            (refused.scope, refused.identifier.as_str()),
            ("tenant", "t")
        );
        limiter
            .admit(&limits, Kind::Write, "other", "c", now)
            .unwrap();
    }

    #[test]
    fn zero_refuses_all_and_unlimited_refuses_none() {
        let limiter = Limiter::default();
        let mut limits = tight();
        limits.requests_per_app = 0;
        let refused = limiter
            .admit(&limits, Kind::Read, "t", "a", Instant::now())
            .unwrap_err();
        assert_eq!((refused.scope, refused.retry_after), ("app", 20));
        let limits = ApiLimits {
            requests_per_app: 0,
            ..ApiLimits::unlimited()
        };
        for _ in 0..10 {
            limiter
                .admit(&limits, Kind::Write, "t", "a", Instant::now())
                .unwrap();
        }
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(whole_seconds(Duration::ZERO), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(whole_seconds(Duration::from_secs(20)), 20);
    }
}
