//! Forwarding to NATS JetStream: `nats://host:4222/SUBJECT`.
//!
//! Each event is published to `SUBJECT` with the header `Nats-Msg-Id` set
//! to [`Outgoing::id`], and the send answers only once JetStream's publish
//! ack arrived, so the event is stored in a stream. A retried item carries
//! the same id, and JetStream drops it as a duplicate within the stream's
//! duplicate window (two minutes unless the stream says otherwise).
//!
//! The subject must be captured by a stream. Without one, connecting fails
//! with a permanent error that says how to create it; with
//! `?create_stream=true` the sink creates a file-backed stream for the
//! subject (named by `stream=NAME`, or after the subject). Reconnects are
//! the client's: while the server is away, sends time out (retryable) and
//! succeed again once it is back.

use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use futures_util::future::BoxFuture;
use url::Url;

use super::{ForwardError, Outgoing, Sink};

/// How long connecting may take before it counts as the server being down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publish waits for JetStream's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// A [`Sink`] publishing to a NATS JetStream subject.
pub struct NatsSink {
    context: jetstream::Context,
    subject: String,
    describe: String,
}

/// JetStream's answer to one publish.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NatsAck {
    /// The stream that stored the event.
    pub stream: String,
    /// Its sequence number in that stream.
    pub sequence: u64,
    /// Whether JetStream had already stored an event with this id within
    /// its duplicate window (and so did not store it again).
    pub duplicate: bool,
}

impl NatsSink {
    /// Connects to the server of `url` (`nats://host:4222/SUBJECT`, options
    /// `create_stream=true` and `stream=NAME`) and checks that a stream
    /// captures the subject, creating one when asked.
    ///
    /// # Errors
    ///
    /// Permanent when the URL has no subject or an unknown option, or when
    /// no stream captures the subject and `create_stream` is not set;
    /// retryable when the server can't be reached.
    pub async fn connect(url: &Url) -> Result<NatsSink, ForwardError> {
        let options = Options::parse(url)?;
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(CONNECT_TIMEOUT)
            .connect(options.server.as_str())
            .await
            .map_err(|e| {
                ForwardError::retryable(format!("nats {}: can't connect: {e}", options.describe))
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .build(client);
        ensure_stream(&context, &options).await?;
        Ok(NatsSink {
            context,
            subject: options.subject,
            describe: options.describe,
        })
    }

    /// Publishes `event` and returns JetStream's ack, with its duplicate
    /// flag; [`Sink::send`] is this without the ack.
    ///
    /// # Errors
    ///
    /// Retryable when the server is away or the ack doesn't come in time;
    /// permanent when no stream captures the subject (any more).
    pub async fn publish(&self, event: &Outgoing) -> Result<NatsAck, ForwardError> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.id.as_str());
        let ack = self
            .context
            .publish_with_headers(self.subject.clone(), headers, event.body.clone())
            .await
            .map_err(|e| self.publish_error(e.kind(), &e))?
            .await
            .map_err(|e| self.publish_error(e.kind(), &e))?;
        Ok(NatsAck {
            stream: ack.stream,
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    fn publish_error(&self, kind: PublishErrorKind, error: &dyn std::fmt::Display) -> ForwardError {
        match kind {
            PublishErrorKind::StreamNotFound => no_stream(&self.subject),
            PublishErrorKind::MaxPayloadExceeded => {
                ForwardError::permanent(format!("nats {}: {error}", self.describe))
            }
            _ => ForwardError::retryable(format!("nats {}: {error}", self.describe)),
        }
    }
}

impl Sink for NatsSink {
    fn send<'a>(&'a self, event: &'a Outgoing) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(async move { self.publish(event).await.map(|_| ()) })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("target", &self.describe)
            .finish_non_exhaustive()
    }
}

/// What a `nats://` URL says.
struct Options {
    /// The server address, credentials included, without path or query.
    server: Url,
    subject: String,
    create_stream: bool,
    stream: Option<String>,
    describe: String,
}

impl Options {
    fn parse(url: &Url) -> Result<Self, ForwardError> {
        let subject = url.path().trim_start_matches('/').to_owned();
        if subject.is_empty() || subject.contains('/') || subject.contains(char::is_whitespace) {
            return Err(ForwardError::permanent(format!(
                "nats target {}: the path must be one subject (nats://host:4222/SUBJECT)",
                redacted(url)
            )));
        }
        let mut create_stream = false;
        let mut stream = None;
        for (key, value) in url.query_pairs() {
            match &*key {
                "create_stream" => create_stream = matches!(&*value, "true" | "1" | "yes"),
                "stream" if !value.is_empty() => stream = Some(value.into_owned()),
                _ => {
                    return Err(ForwardError::permanent(format!(
                        "nats target {}: unknown option {key:?} (known: create_stream, stream)",
                        redacted(url)
                    )));
                }
            }
        }
        let mut server = url.clone();
        server.set_path("");
        server.set_query(None);
        server.set_fragment(None);
        let describe = format!(
            "nats://{}:{}/{subject}",
            url.host_str().unwrap_or(""),
            url.port().unwrap_or(4222)
        );
        Ok(Self {
            server,
            subject,
            create_stream,
            stream,
            describe,
        })
    }
}

/// Checks that a stream captures the subject, or creates one when asked.
async fn ensure_stream(
    context: &jetstream::Context,
    options: &Options,
) -> Result<(), ForwardError> {
    use async_nats::jetstream::context::GetStreamByNameErrorKind;
    match context.stream_by_subject(options.subject.clone()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == GetStreamByNameErrorKind::NotFound => {
            if !options.create_stream {
                return Err(no_stream(&options.subject));
            }
            let name = options
                .stream
                .clone()
                .unwrap_or_else(|| stream_name_for(&options.subject));
            context
                .get_or_create_stream(stream::Config {
                    name: name.clone(),
                    subjects: vec![options.subject.clone()],
                    storage: stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map(|_| ())
                .map_err(|e| {
                    ForwardError::permanent(format!(
                        "nats {}: can't create stream {name}: {e}",
                        options.describe
                    ))
                })
        }
        Err(e) if e.kind() == GetStreamByNameErrorKind::InvalidSubject => Err(
            ForwardError::permanent(format!("nats {}: invalid subject", options.describe)),
        ),
        Err(e) => Err(ForwardError::retryable(format!(
            "nats {}: can't look up streams: {e}",
            options.describe
        ))),
    }
}

fn no_stream(subject: &str) -> ForwardError {
    ForwardError::permanent(format!(
        "no JetStream stream captures subject {subject}: create one \
         (`nats stream add --subjects {subject} NAME`) or pass ?create_stream=true"
    ))
}

/// A stream name for `subject`: stream names can't hold `.`, `*`, `>`,
/// whitespace or path separators.
fn stream_name_for(subject: &str) -> String {
    subject
        .chars()
        .map(|c| match c {
            '.' | '*' | '>' | '/' | '\\' => '_',
            c if c.is_whitespace() => '_',
            c => c,
        })
        .collect()
}

/// `url` without its password, for error messages.
fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<Options, ForwardError> {
        Options::parse(&Url::parse(url).expect("test url"))
    }

    #[test]
    fn subject_and_options_come_from_the_url() {
        let options =
            parse("nats://u:secret@127.0.0.1:4222/graph.events?create_stream=true&stream=G")
                .expect("valid");
        assert_eq!(options.subject, "graph.events");
        assert!(options.create_stream);
        assert_eq!(options.stream.as_deref(), Some("G"));
        assert_eq!(options.server.as_str(), "nats://u:secret@127.0.0.1:4222");
        assert_eq!(options.describe, "nats://127.0.0.1:4222/graph.events");
    }

    #[test]
    fn a_missing_subject_or_unknown_option_is_permanent_and_hides_the_password() {
        for url in [
            "nats://127.0.0.1:4222",
            "nats://127.0.0.1:4222/",
            "nats://127.0.0.1:4222/a/b",
            "nats://u:secret@127.0.0.1:4222/s?bogus=1",
        ] {
            let error = parse(url).err().expect("refused");
            assert!(!error.is_retryable(), "{url}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn stream_names_avoid_forbidden_characters() {
        assert_eq!(stream_name_for("graph.events.>"), "graph_events__");
        assert_eq!(stream_name_for("a.*.b"), "a___b");
    }
}
