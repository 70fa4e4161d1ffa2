//! Waking claimers for items other processes appended: every group commit
//! sends a `NOTIFY` on the schema's channel, and each process `LISTEN`s on
//! a connection of its own, outside the pool. While it listens, an idle
//! claimer polls rarely (retries coming due and lapsed claims send no
//! notification); while it cannot, it polls often.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres_openssl::MakeTlsConnector;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

use super::describe;

/// How often an idle claimer polls while notifications arrive.
pub(super) const POLL_LISTENING: Duration = Duration::from_millis(500);
/// How often it polls while the listening connection is down.
pub(super) const POLL_DEAF: Duration = Duration::from_millis(50);

/// What the listener shares with the store's claimers.
#[derive(Clone, Default)]
pub(super) struct Wakeup {
    /// A claimer waits on it for appended items.
    pub(super) appended: Arc<Notify>,
    /// A claimer was woken and has not claimed yet: wake no other.
    pub(super) waking: Arc<AtomicBool>,
    /// The listening connection is up.
    pub(super) listening: Arc<AtomicBool>,
}

impl Wakeup {
    /// Wakes one waiting claimer, unless one is already on its way (it
    /// claims everything appended meanwhile).
    pub(super) fn wake_one(&self) {
        if !self.waking.swap(true, Ordering::SeqCst) {
            self.appended.notify_one();
        }
    }

    /// How long an idle claimer waits before it looks again unwoken.
    pub(super) fn poll(&self) -> Duration {
        if self.listening.load(Ordering::SeqCst) {
            POLL_LISTENING
        } else {
            POLL_DEAF
        }
    }
}

/// Keeps a connection listening on `channel` (reconnecting after a
/// failure) and wakes a claimer on every notification; the store aborts it
/// when dropped.
pub(super) fn spawn(
    config: tokio_postgres::Config,
    tls: MakeTlsConnector,
    channel: String,
    wakeup: Wakeup,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let listen = format!("LISTEN \"{channel}\"");
        loop {
            if let Err(e) = listen_once(&config, &tls, &listen, &wakeup).await {
                tracing::debug!(error = %e, "listening for appended items failed; polling meanwhile");
            }
            wakeup.listening.store(false, Ordering::SeqCst);
            // Items may have come while nobody listened.
            wakeup.wake_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &MakeTlsConnector,
    listen: &str,
    wakeup: &Wakeup,
) -> Result<(), String> {
    let (client, mut connection) = config
        .connect(tls.clone())
        .await
        .map_err(|e| describe(&e))?;
    let (heard, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    // The connection does its work (and delivers notifications) only while
    // polled: a task of its own polls it until it closes.
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    if heard.send(()).is_err() {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(describe(&e)),
            }
        }
        Ok(())
    });
    client
        .batch_execute(listen)
        .await
        .map_err(|e| describe(&e))?;
    wakeup.listening.store(true, Ordering::SeqCst);
    while notifications.recv().await.is_some() {
        wakeup.wake_one();
    }
    drop(client);
    driver.await.map_err(|e| e.to_string())?
}
