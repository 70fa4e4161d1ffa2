//! A clock that follows a Graph emulator in another process (the CLI's
//! `--graph-clock`), so a manager renews in minutes what Graph would in days.

use futures_util::future::BoxFuture;
use time::OffsetDateTime;

use crate::clock::Clock;

/// The clock of a Graph emulator in another process, followed over HTTP:
/// `GET {url}` answers `{"now": "…", "timeScale": s}` (the emulator's
/// `/emulator/clock`). So a manager run from the CLI against `emulate
/// --time-scale 600` renews in minutes what Graph would in days.
///
/// It re-reads the emulator's time every second (an `advanceSeconds` there
/// is followed within one), runs it forward at the emulator's scale in
/// between, and sleeps in real time: a virtual hour at scale 600 is six
/// seconds.
pub struct RemoteClock {
    anchor: std::sync::Arc<std::sync::Mutex<Anchor>>,
    follower: tokio::task::JoinHandle<()>,
}

#[derive(Clone, Copy, Debug)]
struct Anchor {
    at: std::time::Instant,
    now: OffsetDateTime,
    scale: f64,
}

impl Anchor {
    fn now(&self) -> OffsetDateTime {
        let real = self.at.elapsed().as_secs_f64();
        self.now + time::Duration::seconds_f64(real * self.scale)
    }
}

impl std::fmt::Debug for RemoteClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteClock")
            .field(
                "anchor",
                &*self.anchor.lock().unwrap_or_else(|e| e.into_inner()),
            )
            .finish_non_exhaustive()
    }
}

/// How often [`RemoteClock`] re-reads the emulator's time.
const FOLLOW_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl RemoteClock {
    /// Reads the clock at `url` once, then follows it in the background.
    ///
    /// # Errors
    ///
    /// The first read fails, or does not answer `{"now", "timeScale"}`.
    pub async fn follow(url: &str) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| e.to_string())?;
        let first = read_clock(&http, url).await?;
        let anchor = std::sync::Arc::new(std::sync::Mutex::new(first));
        let shared = anchor.clone();
        let url = url.to_owned();
        let follower = tokio::spawn(async move {
            loop {
                tokio::time::sleep(FOLLOW_EVERY).await;
                match read_clock(&http, &url).await {
                    Ok(read) => *shared.lock().unwrap_or_else(|e| e.into_inner()) = read,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the emulator's clock; running on")
                    }
                }
            }
        });
        Ok(Self { anchor, follower })
    }

    fn anchor(&self) -> Anchor {
        *self.anchor.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for RemoteClock {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

async fn read_clock(http: &reqwest::Client, url: &str) -> Result<Anchor, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Served {
        #[serde(with = "time::serde::rfc3339")]
        now: OffsetDateTime,
        time_scale: f64,
    }
    let sent = std::time::Instant::now();
    let served: Served = http
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("cannot read the clock at {url}: {e}"))?
        .json()
        .await
        .map_err(|_| format!("{url} does not serve {{\"now\", \"timeScale\"}}"))?;
    if !(served.time_scale.is_finite() && served.time_scale > 0.0) {
        return Err(format!(
            "{url} serves a time scale of {}",
            served.time_scale
        ));
    }
    // The answer was read about half a round trip ago.
    let at = sent + sent.elapsed() / 2;
    Ok(Anchor {
        at,
        now: served.now,
        scale: served.time_scale,
    })
}

impl Clock for RemoteClock {
    fn now(&self) -> OffsetDateTime {
        self.anchor().now()
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            // In slices, so a jump of the emulator's clock is followed.
            loop {
                let anchor = self.anchor();
                let left = (deadline - anchor.now()).as_seconds_f64();
                if left <= 0.0 {
                    return;
                }
                let real = std::time::Duration::from_secs_f64((left / anchor.scale).min(1e6));
                tokio::time::sleep(real.min(FOLLOW_EVERY)).await;
            }
        })
    }
}
