//! [`Forward`]: the handler that sends each event to the sinks whose
//! route takes it, and routes written `[kind=K[,K…]=>]URL`.

use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::join_all;
use url::Url;

use super::{Outgoing, Sink};
use crate::handler::{
    BoxError, ChangeEvent, GiveUp, Handler, HandlerEvent, LifecycleEvent, ResyncEvent,
};

/// Where events go, as written on the command line: `URL` takes every
/// event, `kind=K=>URL` only those of kind `K`, `kind=K1,K2=>URL` either.
///
/// A kind is an event's kind (`change`, `lifecycle`, `resync`) or a
/// change's resource kind (`message`, `chatMessage`, `driveItem`, …, as in
/// the JSON lines' `resourceKind`), compared exactly.
///
/// ```
/// use msgraph_webhooks::forward::RouteSpec;
///
/// let route: RouteSpec = "kind=chatMessage,lifecycle=>nats://127.0.0.1:4222/graph".parse().unwrap();
/// assert_eq!(route.url().scheme(), "nats");
/// assert!(route.takes("lifecycle", None));
/// assert!(route.takes("change", Some("chatMessage")));
/// assert!(!route.takes("change", Some("message")));
///
/// let all: RouteSpec = "https://example.com/hook".parse().unwrap();
/// assert!(all.takes("resync", None));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    kinds: Vec<String>,
    url: Url,
}

/// The separator between a route's condition and its URL.
const ARROW: &str = "=>";

impl RouteSpec {
    /// A route taking every event.
    pub fn all(url: Url) -> Self {
        Self {
            kinds: Vec::new(),
            url,
        }
    }

    /// The target's URL.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// Whether an event of `kind` (and, for a change, `resource_kind`)
    /// goes this way.
    pub fn takes(&self, kind: &str, resource_kind: Option<&str>) -> bool {
        self.kinds.is_empty()
            || self
                .kinds
                .iter()
                .any(|k| k == kind || Some(k.as_str()) == resource_kind)
    }
}

/// Why a route does not parse.
#[derive(Debug)]
#[non_exhaustive]
pub struct RouteError(String);

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RouteError {}

impl FromStr for RouteSpec {
    type Err = RouteError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let (condition, url) = match text.split_once(ARROW) {
            Some((condition, url)) => (Some(condition.trim()), url.trim()),
            None => (None, text),
        };
        let kinds = match condition {
            None => Vec::new(),
            Some(condition) => {
                let Some(list) = condition.strip_prefix("kind=") else {
                    return Err(RouteError(format!(
                        "a route's condition is kind=K[,K…] before {ARROW}, not {condition:?}"
                    )));
                };
                let kinds: Vec<String> = list
                    .split(',')
                    .map(str::trim)
                    .filter(|k| !k.is_empty())
                    .map(str::to_owned)
                    .collect();
                if kinds.is_empty() {
                    return Err(RouteError(format!("kind= names no kind before {ARROW}")));
                }
                kinds
            }
        };
        let url = Url::parse(url).map_err(|e| {
            RouteError(format!(
                "the route's target is not a URL ({e}); write [kind=K{ARROW}]URL"
            ))
        })?;
        Ok(Self { kinds, url })
    }
}

/// One route with its connected sink.
struct Route {
    spec: RouteSpec,
    sink: Arc<dyn Sink>,
}

/// A [`Handler`] that forwards every event to each sink whose route takes
/// it, and answers `Ok` for an event only once every one of them
/// confirmed it.
///
/// A failure of any sink fails the event: the worker retries it with
/// backoff, then dead-letters it with the reasons, each naming its target
/// and whether retrying can help ("permanent"). When every failing target
/// refused for good (a permanent [`ForwardError`](super::ForwardError)), the event goes to the
/// dead letters at once ([`GiveUp`]). A retry sends to every
/// matching sink again, those that had confirmed included: delivery is at
/// least once, and consumers deduplicate by the event's id (`webhook-id`,
/// `Nats-Msg-Id`, `message_id`).
///
/// An event no route takes is completed and logged at debug: the routes
/// say what goes where.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
/// use msgraph_webhooks::forward::{self, Forward, SinkOptions};
///
/// let route: forward::RouteSpec = "kind=message=>https://example.com/mail".parse()?;
/// let sink = forward::connect(route.url(), &SinkOptions::default()).await?;
/// let handler = Forward::new().route(route, sink);
/// let receiver = msgraph_webhooks::Receiver::builder(handler);
/// # let _ = receiver; Ok(()) }
/// ```
#[derive(Default)]
pub struct Forward {
    routes: Vec<Route>,
}

impl Forward {
    /// A handler with no routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route: events `spec` takes go to `sink` too.
    #[must_use]
    pub fn route(mut self, spec: RouteSpec, sink: impl Into<Arc<dyn Sink>>) -> Self {
        self.routes.push(Route {
            spec,
            sink: sink.into(),
        });
        self
    }

    /// The targets, for logs (never a secret).
    pub fn describe(&self) -> Vec<String> {
        self.routes.iter().map(|r| r.sink.describe()).collect()
    }

    async fn forward(&self, event: HandlerEvent) -> Result<(), BoxError> {
        let outgoing = Outgoing::of(&event);
        let sends = self
            .routes
            .iter()
            .filter(|r| {
                r.spec
                    .takes(outgoing.kind, outgoing.resource_kind.as_deref())
            })
            .map(|r| async {
                r.sink.send(&outgoing).await.map_err(|e| {
                    let target = r.sink.describe();
                    if e.is_retryable() {
                        (format!("{target}: {e}"), true)
                    } else {
                        (
                            format!("{target}: {e} (permanent: retrying will not help)"),
                            false,
                        )
                    }
                })
            });
        let answers = join_all(sends).await;
        if answers.is_empty() {
            tracing::debug!(id = %outgoing.id, kind = outgoing.kind, "no route takes this event");
            return Ok(());
        }
        let failures: Vec<(String, bool)> = answers.into_iter().filter_map(Result::err).collect();
        if failures.is_empty() {
            return Ok(());
        }
        let retryable = failures.iter().any(|(_, retryable)| *retryable);
        let reasons: Vec<&str> = failures.iter().map(|(reason, _)| reason.as_str()).collect();
        let reason = format!("forwarding failed: {}", reasons.join("; "));
        if retryable {
            Err(reason.into())
        } else {
            // Every failing target refused for good: a dead letter now.
            Err(GiveUp::new(reason).into())
        }
    }
}

impl std::fmt::Debug for Forward {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forward")
            .field("targets", &self.describe())
            .finish()
    }
}

impl Handler for Forward {
    fn on_change(&self, event: ChangeEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.forward(HandlerEvent::Change(event))
    }

    fn on_lifecycle(
        &self,
        event: LifecycleEvent,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.forward(HandlerEvent::Lifecycle(event))
    }

    fn on_resync(&self, event: ResyncEvent) -> impl Future<Output = Result<(), BoxError>> + Send {
        self.forward(HandlerEvent::Resync(event))
    }

    /// The batch's events all at once, each to its sinks concurrently.
    async fn on_batch(&self, events: Vec<HandlerEvent>) -> Vec<Result<(), BoxError>> {
        join_all(events.into_iter().map(|event| self.forward(event))).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_and_without_a_condition() {
        let all: RouteSpec = " http://127.0.0.1:9/hook ".parse().unwrap();
        assert_eq!(
            all,
            RouteSpec::all(Url::parse("http://127.0.0.1:9/hook").unwrap())
        );
        let some: RouteSpec = "kind= message , resync =>redis://h/?stream=s"
            .parse()
            .unwrap();
        assert_eq!(some.kinds, ["message", "resync"]);
        assert!(some.takes("resync", None));
        assert!(some.takes("change", Some("message")));
        assert!(!some.takes("change", Some("event")));
        assert!(!some.takes("lifecycle", None));
    }

    #[test]
    fn bad_routes_are_refused_with_the_form_to_write() {
        for bad in [
            "",
            "not a url",
            "kind==>http://x/",
            "kind=,=>http://x/",
            "resource=me/messages=>http://x/",
            "kind=message=>",
            "=>http://x/",
            "kind=message=>=>",
        ] {
            let e = bad.parse::<RouteSpec>().unwrap_err();
            assert!(e.to_string().contains("kind="), "{bad:?}: {e}");
        }
    }
}
