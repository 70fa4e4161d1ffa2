//! `msgraph-webhooks demo`: the emulator and this crate's receiver in one
//! process, talking over 127.0.0.1 the way Graph and an app do.
//!
//! It starts both on free ports; gets tokens from the emulator's token
//! endpoint (a delegated one for a user, an app-only one); creates a basic
//! mail subscription and a rich chat-message subscription through the real
//! subscriptions API (each passes the validation handshake inside the
//! create call); fires changes and a lifecycle event through the control
//! API; prints the typed events as the receiver hands them over (the chat
//! message decrypted, its validation token checked against the emulator's
//! JWKS); answers `reauthorizationRequired` by reauthorizing; and ends with
//! a summary of subscriptions, deliveries and latencies.

use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, Instant};

use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use super::{DeliveryKind, DeliveryRecord, Emulator, Outcome};
use crate::crypto::{KeyRing, generate_certificate};
use crate::handler::HandlerEvent;
use crate::listener::ServerConfig;
use crate::tokens::Jwks;
use crate::{BoxError, ChangeEvent, ClientState, Handler, LifecycleEvent, Receiver};

/// The app id the demo subscribes as.
pub const DEMO_APP_ID: &str = "de300000-0000-4000-8000-000000000001";

/// How long the demo waits for its events before it gives up.
const EVENT_DEADLINE: Duration = Duration::from_secs(30);

/// What the demo did.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Summary {
    /// The subscriptions created: (id, resource, rich).
    pub subscriptions: Vec<(String, String, bool)>,
    /// Every delivery attempt the emulator made.
    pub deliveries: Vec<DeliveryRecord>,
    /// The events the receiver handed over, as [`HandlerEvent::to_json`] lines.
    pub events: Vec<Value>,
    /// From start to summary.
    pub elapsed: Duration,
}

/// Hands every event to the demo's loop.
struct Forward(mpsc::UnboundedSender<HandlerEvent>);

impl Handler for Forward {
    async fn on_change(&self, event: ChangeEvent) -> Result<(), BoxError> {
        self.0.send(HandlerEvent::Change(event)).map_err(Into::into)
    }

    async fn on_lifecycle(&self, event: LifecycleEvent) -> Result<(), BoxError> {
        self.0
            .send(HandlerEvent::Lifecycle(event))
            .map_err(Into::into)
    }
}

fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                utf8_percent_encode(k, NON_ALPHANUMERIC),
                utf8_percent_encode(v, NON_ALPHANUMERIC)
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn token(
    client: &reqwest::Client,
    url: &str,
    fields: &[(&str, &str)],
) -> Result<String, BoxError> {
    let answer: Value = client
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(fields))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    answer["access_token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "the token endpoint gave no access_token".into())
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
    clipped.push('…');
    clipped
}

/// Writes a line; a closed stdout is not worth failing the demo for.
macro_rules! say {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
        let _ = $out.flush();
    }};
}

/// Runs the demo, writing what happens to `out`.
///
/// # Errors
///
/// Anything that keeps the demo from completing: a port that can't be
/// bound, a subscription refused, events that don't arrive within 30 s.
pub async fn run(out: &mut (dyn Write + Send)) -> Result<Summary, BoxError> {
    let started = Instant::now();
    let emulator = Emulator::start().await?;
    let client_state = ClientState::random();

    // The certificate the rich subscription encrypts to; its key decrypts
    // in the receiver, which checks validation tokens with the emulator's JWKS.
    let certificate = generate_certificate("msgraph-webhooks demo", 2048, 2)?;
    let mut keys = KeyRing::new();
    keys.insert("demo-cert", certificate.key().clone())?;

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let receiver = Receiver::builder(Forward(events_tx))
        .client_state(client_state.clone())
        .key_ring(keys)
        .app_ids([DEMO_APP_ID])
        .tenant_ids([emulator.tenant_id()])
        .jwks(Jwks::from_url(&emulator.jwks_url())?)
        .workers(2)
        .build()?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let receiver_url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = tokio::spawn(async move {
        receiver
            .serve(listener, &ServerConfig::default(), async {
                let _ = stopped.await;
            })
            .await
    });

    say!(
        out,
        "msgraph-webhooks demo: a local Graph and this crate's receiver, over 127.0.0.1\n"
    );
    say!(
        out,
        "  emulator  {}  (Graph API at /v1.0, tokens at /common/oauth2/v2.0/token)",
        emulator.url()
    );
    say!(
        out,
        "  receiver  {receiver_url}  (notifications at /notify, lifecycle at /lifecycle)"
    );
    say!(
        out,
        "            decrypts with certificate {}, checks tokens against {}\n",
        certificate.thumbprint(),
        emulator.jwks_url()
    );

    let client = reqwest::Client::new();
    let user_token = token(
        &client,
        &emulator.token_url("common"),
        &[
            ("grant_type", "password"),
            ("client_id", DEMO_APP_ID),
            ("username", "ada@contoso.com"),
            ("password", "demo"),
            ("scope", "https://graph.microsoft.com/Mail.Read"),
        ],
    )
    .await?;
    let app_token = token(
        &client,
        &emulator.token_url("common"),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", DEMO_APP_ID),
            ("client_secret", "demo"),
            ("scope", "https://graph.microsoft.com/.default"),
        ],
    )
    .await?;
    say!(
        out,
        "token      delegated for ada@contoso.com (Mail.Read); app-only for {DEMO_APP_ID}\n"
    );

    let expires = |minutes: i64| {
        super::store::graph_time(emulator.clock().now() + time::Duration::minutes(minutes))
    };
    let mail = json!({
        "changeType": "created,updated",
        "notificationUrl": format!("{receiver_url}/notify"),
        "resource": "me/mailFolders('Inbox')/messages",
        "expirationDateTime": expires(24 * 60),
        "clientState": client_state.expose(),
    });
    let chat = json!({
        "changeType": "created",
        "notificationUrl": format!("{receiver_url}/notify"),
        "lifecycleNotificationUrl": format!("{receiver_url}/lifecycle"),
        "resource": "chats/19:demo@thread.v2/messages",
        "expirationDateTime": expires(120),
        "clientState": client_state.expose(),
        "includeResourceData": true,
        "encryptionCertificate": certificate.encryption_certificate(),
        "encryptionCertificateId": "demo-cert",
    });
    let mut subscriptions = Vec::new();
    for (label, token, body, rich) in [
        ("basic", &user_token, &mail, false),
        ("rich ", &app_token, &chat, true),
    ] {
        let asked = Instant::now();
        let answer = client
            .post(format!("{}/subscriptions", emulator.graph_url()))
            .bearer_auth(token)
            .json(body)
            .send()
            .await?;
        let status = answer.status();
        let json: Value = answer.json().await?;
        if status.as_u16() != 201 {
            return Err(
                format!("creating the {label} subscription failed: {status} {json}").into(),
            );
        }
        let id = json["id"].as_str().unwrap_or_default().to_owned();
        let resource = body["resource"].as_str().unwrap_or_default().to_owned();
        say!(
            out,
            "subscribe  {label}  {resource:<36} → 201 in {:>3} ms, handshake passed  (id {}…)",
            asked.elapsed().as_millis(),
            short(&id)
        );
        subscriptions.push((id, resource, rich));
    }
    say!(out, "");

    let control = |path: &str| format!("{}/emulator/{path}", emulator.url());
    let changes = [
        json!({"resource": "me/mailFolders('Inbox')/messages", "changeType": "created",
               "data": {"id": "AAMkAGI1-quarterly", "subject": "Quarterly report"}}),
        json!({"resource": "me/mailFolders('Inbox')/messages", "changeType": "updated",
               "data": {"id": "AAMkAGI1-quarterly", "subject": "Quarterly report (v2)"}}),
        json!({"resource": "chats/19:demo@thread.v2/messages", "changeType": "created",
               "data": {"body": {"contentType": "text", "content": "Hello from the demo"},
                        "from": {"user": {"displayName": "Ada Lovelace"}},
                        "id": "1616990032035", "chatId": "19:demo@thread.v2", "messageType": "message"}}),
    ];
    for change in &changes {
        client
            .post(control("changes"))
            .json(change)
            .send()
            .await?
            .error_for_status()?;
        say!(
            out,
            "fire       {:<8} {}",
            change["changeType"].as_str().unwrap_or_default(),
            change["resource"].as_str().unwrap_or_default()
        );
    }
    let rich_id = subscriptions[1].0.clone();
    client
        .post(control("lifecycle"))
        .json(&json!({"subscriptionId": rich_id, "lifecycleEvent": "reauthorizationRequired"}))
        .send()
        .await?
        .error_for_status()?;
    say!(
        out,
        "fire       reauthorizationRequired for {}…\n",
        short(&rich_id)
    );

    let expected = changes.len() + 1;
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    while events.len() < expected {
        let event = match tokio::time::timeout_at(deadline, events_rx.recv()).await {
            Ok(Some(event)) => event,
            _ => {
                return Err(format!(
                    "only {} of {expected} events arrived within {EVENT_DEADLINE:?}",
                    events.len()
                )
                .into());
            }
        };
        print_event(out, &event);
        if let HandlerEvent::Lifecycle(lifecycle) = &event {
            let answer = client
                .post(format!(
                    "{}/subscriptions/{}/reauthorize",
                    emulator.graph_url(),
                    lifecycle.subscription_id()
                ))
                .bearer_auth(&app_token)
                .send()
                .await?;
            say!(
                out,
                "           → POST /subscriptions/{}…/reauthorize → {}",
                short(lifecycle.subscription_id()),
                answer.status().as_u16()
            );
        }
        events.push(event.to_json());
    }

    let deliveries = emulator.deliveries();
    let elapsed = started.elapsed();
    say!(
        out,
        "\n{}",
        summary(&subscriptions, &deliveries, events.len(), elapsed)
    );

    // The emulator first: closing its client's pooled connections lets the
    // receiver's graceful shutdown finish at once.
    emulator.shutdown().await;
    let _ = stop.send(());
    let _ = serving.await;
    Ok(Summary {
        subscriptions,
        deliveries,
        events,
        elapsed,
    })
}

fn print_event(out: &mut (dyn Write + Send), event: &HandlerEvent) {
    match event {
        HandlerEvent::Change(change) => {
            let detail = match change.data() {
                Some(data) => format!(
                    "decrypted, validation token verified: {}",
                    clip(&data.to_string(), 100)
                ),
                None => format!(
                    "resourceData id {}",
                    change
                        .resource_data()
                        .and_then(|d| d.id.as_deref())
                        .unwrap_or("-")
                ),
            };
            say!(
                out,
                "event      change     {:<8} {:<12} {}\n           {detail}",
                change.change_type().as_str(),
                change.resource_kind().as_str(),
                change.resource()
            );
        }
        HandlerEvent::Lifecycle(lifecycle) => say!(
            out,
            "event      lifecycle  {} for {}…",
            lifecycle.lifecycle_event(),
            short(lifecycle.subscription_id())
        ),
        HandlerEvent::Resync(resync) => say!(
            out,
            "event      resync     {} {} ({})",
            resync.removed().map_or("changed", |r| r.as_str()),
            resync.id(),
            resync.reason()
        ),
    }
}

/// The closing summary: subscriptions, deliveries by outcome, latencies.
fn summary(
    subscriptions: &[(String, String, bool)],
    deliveries: &[DeliveryRecord],
    events: usize,
    elapsed: Duration,
) -> String {
    let rich = subscriptions.iter().filter(|s| s.2).count();
    let validations = deliveries
        .iter()
        .filter(|d| d.kind == DeliveryKind::Validation)
        .count();
    let posts: Vec<&DeliveryRecord> = deliveries
        .iter()
        .filter(|d| d.kind != DeliveryKind::Validation)
        .collect();
    let delivered = posts
        .iter()
        .filter(|d| d.outcome == Outcome::Delivered)
        .count();
    let items: usize = posts.iter().map(|d| d.items).sum();
    let mut latencies: Vec<f64> = posts.iter().filter_map(|d| d.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    let mut text = String::from("summary\n");
    let _ = writeln!(
        text,
        "  subscriptions  {} ({} basic, {rich} rich), each validated by a handshake",
        subscriptions.len(),
        subscriptions.len() - rich
    );
    let _ = writeln!(
        text,
        "  deliveries     {validations} validation requests; {} notification POSTs carrying {items} items, {delivered} delivered",
        posts.len()
    );
    if let (Some(min), Some(max)) = (latencies.first(), latencies.last()) {
        let median = latencies[latencies.len() / 2];
        let _ = writeln!(
            text,
            "  latency        emulator → receiver's 202: min {min:.1} ms, median {median:.1} ms, max {max:.1} ms"
        );
    }
    let _ = write!(
        text,
        "  events         {events} typed events handed to the handler; {:.2} s in all",
        elapsed.as_secs_f64()
    );
    text
}
