//! Forwarding to RabbitMQ (AMQP 0-9-1):
//! `amqp://user:pass@host:5672/VHOST?exchange=E&routing_key=K`.
//!
//! Each event is published as a persistent message (delivery mode 2,
//! content type `application/json`, `message_id` = [`Outgoing::id`]) on a
//! channel in confirm mode, and the send answers only once the broker
//! confirmed it. It is published `mandatory`: an event no queue is bound
//! to receive comes back, and the send fails (retryable) instead of the
//! broker dropping it. Without `exchange` the default exchange is used, so
//! `routing_key` names the queue.
//!
//! A lost connection is re-opened by the next send.

use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use url::Url;

use super::{ForwardError, Outgoing, Sink};

/// AMQP delivery mode of a message the broker writes to disk.
const PERSISTENT: u8 = 2;

/// A [`Sink`] publishing to a RabbitMQ exchange.
pub struct AmqpSink {
    /// The broker's URI for lapin: credentials and vhost, without our options.
    uri: String,
    exchange: String,
    routing_key: String,
    describe: String,
    link: tokio::sync::Mutex<Option<Link>>,
    /// One publish in flight on the channel at a time: lapin hands a
    /// `basic.return` to whichever pending confirm completes next, so with
    /// several in flight an unroutable message's return can land on another
    /// message's confirm and the unroutable one look confirmed (found by the
    /// broker-restart fault test: a queue not yet recovered returns them).
    /// One at a time, the return and the confirm are the same message's.
    in_flight: tokio::sync::Mutex<()>,
}

/// An open connection and its confirm-mode channel.
struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

impl AmqpSink {
    /// Connects to the broker of `url` and opens a channel in confirm mode;
    /// when an `exchange` is named, checks that it exists.
    ///
    /// # Errors
    ///
    /// Permanent when the URL lacks `routing_key` or has an unknown option,
    /// when the broker refuses the login or the vhost, or when the exchange
    /// doesn't exist; retryable when the broker can't be reached.
    pub async fn connect(url: &Url) -> Result<AmqpSink, ForwardError> {
        let sink = Self::parse(url)?;
        let link = sink.open().await.map_err(|e| {
            let message = format!("amqp {}: can't connect: {e}", sink.describe);
            if e.is_io_error() {
                ForwardError::retryable(message)
            } else {
                ForwardError::permanent(message)
            }
        })?;
        if !sink.exchange.is_empty() {
            link.channel
                .exchange_declare(
                    sink.exchange.as_str().into(),
                    lapin::ExchangeKind::Direct,
                    ExchangeDeclareOptions {
                        passive: true,
                        ..ExchangeDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    ForwardError::permanent(format!(
                        "amqp {}: exchange {:?} is not usable: {e} (declare it first)",
                        sink.describe, sink.exchange
                    ))
                })?;
        }
        *sink.link.lock().await = Some(link);
        Ok(sink)
    }

    fn parse(url: &Url) -> Result<AmqpSink, ForwardError> {
        let mut exchange = String::new();
        let mut routing_key = None;
        let mut passed = Vec::new();
        for (key, value) in url.query_pairs() {
            match &*key {
                "exchange" => exchange = value.into_owned(),
                "routing_key" => routing_key = Some(value.into_owned()),
                // lapin's own connection options.
                "heartbeat" | "connection_timeout" | "channel_max" | "frame_max"
                | "auth_mechanism" => passed.push((key.into_owned(), value.into_owned())),
                _ => {
                    return Err(ForwardError::permanent(format!(
                        "amqp target {}: unknown option {key:?} (known: exchange, routing_key)",
                        describe(url, "", "")
                    )));
                }
            }
        }
        let Some(routing_key) = routing_key else {
            return Err(ForwardError::permanent(format!(
                "amqp target {}: needs ?routing_key=K (and ?exchange=E, or the default exchange)",
                describe(url, &exchange, "")
            )));
        };
        if exchange.len() > 255 || routing_key.len() > 255 {
            return Err(ForwardError::permanent(
                "amqp target: exchange and routing key are at most 255 bytes",
            ));
        }
        let mut uri = url.clone();
        uri.set_fragment(None);
        if passed.is_empty() {
            uri.set_query(None);
        } else {
            uri.query_pairs_mut().clear().extend_pairs(passed);
        }
        Ok(AmqpSink {
            uri: uri.to_string(),
            describe: describe(url, &exchange, &routing_key),
            exchange,
            routing_key,
            link: tokio::sync::Mutex::new(None),
            in_flight: tokio::sync::Mutex::new(()),
        })
    }

    async fn open(&self) -> lapin::Result<Link> {
        let connection = Connection::connect(&self.uri, ConnectionProperties::default()).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    /// The open channel, re-opening the connection if it was lost.
    async fn channel(&self) -> Result<Channel, ForwardError> {
        let mut link = self.link.lock().await;
        if let Some(open) = link.as_ref()
            && open.channel.status().connected()
        {
            return Ok(open.channel.clone());
        }
        *link = None;
        let open = self
            .open()
            .await
            .map_err(|e| self.retryable("can't connect", &e))?;
        let channel = open.channel.clone();
        *link = Some(open);
        Ok(channel)
    }

    async fn publish(&self, event: &Outgoing) -> Result<(), ForwardError> {
        if event.id.len() > 255 {
            return Err(ForwardError::permanent(format!(
                "amqp {}: message id longer than 255 bytes",
                self.describe
            )));
        }
        let _alone = self.in_flight.lock().await;
        let channel = self.channel().await?;
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(event.id.as_str().into())
            .with_type(event.kind.into());
        let confirm = channel
            .basic_publish(
                self.exchange.as_str().into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &event.body,
                properties,
            )
            .await
            .map_err(|e| self.retryable("publish failed", &e))?
            .await
            .map_err(|e| self.retryable("no confirm", &e))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(ForwardError::retryable(format!(
                "amqp {}: no queue is bound to receive it (returned unroutable)",
                self.describe
            ))),
            Confirmation::Nack(_) => Err(ForwardError::retryable(format!(
                "amqp {}: the broker refused it (nack)",
                self.describe
            ))),
            Confirmation::NotRequested => Err(ForwardError::retryable(format!(
                "amqp {}: channel not in confirm mode",
                self.describe
            ))),
        }
    }

    fn retryable(&self, what: &str, error: &lapin::Error) -> ForwardError {
        ForwardError::retryable(format!("amqp {}: {what}: {error}", self.describe))
    }
}

impl Sink for AmqpSink {
    fn send<'a>(&'a self, event: &'a Outgoing) -> BoxFuture<'a, Result<(), ForwardError>> {
        Box::pin(self.publish(event))
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl std::fmt::Debug for AmqpSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpSink")
            .field("target", &self.describe)
            .finish_non_exhaustive()
    }
}

/// The target for logs: host, vhost, exchange and routing key; never the
/// user's password.
fn describe(url: &Url, exchange: &str, routing_key: &str) -> String {
    format!(
        "{}://{}:{}{}?exchange={exchange}&routing_key={routing_key}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().unwrap_or(5672),
        url.path()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<AmqpSink, ForwardError> {
        AmqpSink::parse(&Url::parse(url).expect("test url"))
    }

    #[test]
    fn options_are_ours_and_the_uri_keeps_the_rest() {
        let sink = parse(
            "amqp://guest:secret@127.0.0.1:5672/%2f?exchange=graph&routing_key=ev&heartbeat=10",
        )
        .expect("valid");
        assert_eq!(sink.exchange, "graph");
        assert_eq!(sink.routing_key, "ev");
        assert_eq!(
            sink.uri,
            "amqp://guest:secret@127.0.0.1:5672/%2f?heartbeat=10"
        );
        assert_eq!(
            sink.describe,
            "amqp://127.0.0.1:5672/%2f?exchange=graph&routing_key=ev"
        );
    }

    #[test]
    fn bad_targets_are_permanent_and_never_show_the_password() {
        for url in [
            "amqp://guest:secret@127.0.0.1:5672/%2f?exchange=graph",
            "amqp://guest:secret@127.0.0.1:5672/%2f?routing_key=k&bogus=1",
        ] {
            let error = parse(url).expect_err("refused");
            assert!(!error.is_retryable(), "{url}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        let sink = parse("amqp://guest:secret@h/v?routing_key=k").expect("valid");
        assert!(!sink.describe().contains("secret"));
        assert!(!format!("{sink:?}").contains("secret"));
    }
}
