//! Forwarding to a Redis stream: `redis://host:6379/?stream=NAME[&maxlen=N]`.
//!
//! Each event is appended with `XADD NAME [MAXLEN ~ N] * id <id> kind
//! <kind> event <line>`, and the send answers once Redis returned the
//! entry's id. Redis has no dedupe of its own: consumers deduplicate by the
//! `id` field. An `XADD` Redis acknowledged is as durable as Redis's
//! persistence settings (`appendonly yes` for the inbox's promise).
//!
//! The connection manager reconnects on its own: while Redis is away,
//! sends fail (retryable) and succeed again once it is back.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use url::Url;

use super::{ForwardError, Outgoing, Sink};

/// Time allowed for one `XADD`.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A [`Sink`] appending to a Redis stream.
pub struct RedisStreamSink {
    conn: ConnectionManager,
    stream: String,
    maxlen: Option<u64>,
    describe: String,
}

impl RedisStreamSink {
    /// Prepares the connection to the Redis of `url` (options `stream`,
    /// required, and `maxlen`, which trims the stream to about N entries).
    /// The connection is made by the first send.
    ///
    /// # Errors
    ///
    /// Permanent when the URL lacks `stream`, has an unknown option or a
    /// `maxlen` that is not a number, or is not a Redis URL.
    pub async fn connect(url: &Url) -> Result<RedisStreamSink, ForwardError> {
        let mut stream = None;
        let mut maxlen = None;
        let mut passed = Vec::new();
        let shown = format!(
            "{}://{}:{}{}",
            url.scheme(),
            url.host_str().unwrap_or(""),
            url.port().unwrap_or(6379),
            url.path()
        );
        for (key, value) in url.query_pairs() {
            match &*key {
                "stream" if !value.is_empty() => stream = Some(value.into_owned()),
                "maxlen" => {
                    maxlen = Some(value.parse::<u64>().map_err(|_| {
                        ForwardError::permanent(format!(
                            "redis target {shown}: maxlen must be a number, not {value:?}"
                        ))
                    })?)
                }
                // The redis crate's own connection options.
                "protocol" | "db" => passed.push((key.into_owned(), value.into_owned())),
                _ => {
                    return Err(ForwardError::permanent(format!(
                        "redis target {shown}: unknown option {key:?} (known: stream, maxlen)"
                    )));
                }
            }
        }
        let Some(stream) = stream else {
            return Err(ForwardError::permanent(format!(
                "redis target {shown}: needs ?stream=NAME"
            )));
        };
        let mut server = url.clone();
        server.set_fragment(None);
        if passed.is_empty() {
            server.set_query(None);
        } else {
            server.query_pairs_mut().clear().extend_pairs(passed);
        }
        let client = redis::Client::open(server.as_str())
            .map_err(|e| ForwardError::permanent(format!("redis target {shown}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| ForwardError::permanent(format!("redis target {shown}: {e}")))?;
        Ok(RedisStreamSink {
            conn,
            describe: format!("{shown}?stream={stream}"),
            stream,
            maxlen,
        })
    }

    async fn append(&self, event: &Outgoing) -> Result<(), ForwardError> {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&self.stream);
        if let Some(maxlen) = self.maxlen {
            cmd.arg("MAXLEN").arg("~").arg(maxlen);
        }
        cmd.arg("*")
            .arg("id")
            .arg(&event.id)
            .arg("kind")
            .arg(event.kind)
            .arg("event")
            .arg(event.body.as_ref());
        let mut conn = self.conn.clone();
        let _id: String = cmd.query_async(&mut conn).await.map_err(|e| {
            let message = format!("redis {}: XADD failed: {e}", self.describe);
            // A key of another type or a refused command won't change by retrying.
            if matches!(e.code(), Some("WRONGTYPE" | "ERR" | "NOPERM")) {
                ForwardError::permanent(message)
            } else {
                ForwardError::retryable(message)
            }
        })?;
        Ok(())
    }
}

impl Sink for RedisStreamSink {
    fn send<'a>(&'a self, event: &'a Outgoing) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(self.append(event))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl std::fmt::Debug for RedisStreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamSink")
            .field("target", &self.describe)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn connect(url: &str) -> Result<RedisStreamSink, ForwardError> {
        RedisStreamSink::connect(&Url::parse(url).expect("test url")).await
    }

    #[tokio::test]
    async fn bad_targets_are_permanent_and_never_show_the_password() {
        for url in [
            "redis://:secret@127.0.0.1:6379/",
            "redis://:secret@127.0.0.1:6379/?stream=s&maxlen=many",
            "redis://:secret@127.0.0.1:6379/?stream=s&bogus=1",
        ] {
            let error = connect(url).await.expect_err("refused");
            assert!(!error.is_retryable(), "{url}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        let sink = connect("redis://:secret@127.0.0.1:6379/?stream=s&maxlen=10")
            .await
            .expect("valid");
        assert_eq!(sink.describe(), "redis://127.0.0.1:6379/?stream=s");
        assert!(!format!("{sink:?}").contains("secret"));
    }
}
