//! A recording relay on 127.0.0.1: forwards every request to a target (the
//! emulator, a receiver), remembers what passed, and can refuse on demand —
//! a Graph spy, or a gate in front of a receiver.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// What the relay does with the next requests.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Forward everything.
    Open,
    /// Answer everything with this status.
    Refuse(u16),
    /// Answer every GET with this status (Graph's list unavailable).
    RefuseGets(u16),
    /// Answer the next `n` validation requests (`?validationToken=`) with
    /// `500`, then forward.
    FailHandshakes(usize),
    /// Never answer (a Graph that hangs).
    Hang,
    /// Forward, but hold the answer to a successful `POST` (a create Graph
    /// has done but not yet told the caller about) until
    /// [`release`](Relay::release).
    HoldCreated,
}

#[derive(Clone)]
struct RelayState {
    target: Arc<Mutex<String>>,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<String>>>,
    released: tokio::sync::watch::Sender<bool>,
    client: reqwest::Client,
}

pub struct Relay {
    pub addr: std::net::SocketAddr,
    state: RelayState,
    task: tokio::task::JoinHandle<()>,
}

async fn relay(
    State(state): State<RelayState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned());
    state.seen.lock().unwrap().push(format!("{method} {path}"));
    let refuse = {
        let mut mode = state.mode.lock().unwrap();
        match &mut *mode {
            Mode::Open => None,
            Mode::Refuse(status) => Some(*status),
            Mode::RefuseGets(status) if method == Method::GET => Some(*status),
            Mode::RefuseGets(_) => None,
            Mode::FailHandshakes(n) if *n > 0 && path.contains("validationToken=") => {
                *n -= 1;
                Some(500)
            }
            Mode::FailHandshakes(_) => None,
            Mode::Hang | Mode::HoldCreated => None,
        }
    };
    if matches!(*state.mode.lock().unwrap(), Mode::Hang) {
        std::future::pending::<()>().await;
    }
    if let Some(status) = refuse {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    let mut request = state
        .client
        .request(
            method.clone(),
            format!("{}{path}", state.target.lock().unwrap()),
        )
        .body(body.to_vec());
    for name in [
        "authorization",
        "content-type",
        "accept",
        "client-request-id",
        "prefer",
    ] {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value.as_bytes());
        }
    }
    let Ok(answer) = request.send().await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let mut out = HeaderMap::new();
    for name in [
        "content-type",
        "request-id",
        "client-request-id",
        "retry-after",
    ] {
        if let Some(value) = answer.headers().get(name) {
            out.insert(
                axum::http::HeaderName::from_static(name),
                axum::http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            );
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    let hold = matches!(*state.mode.lock().unwrap(), Mode::HoldCreated);
    if hold && method == Method::POST && status.is_success() {
        let mut released = state.released.subscribe();
        let _ = released.wait_for(|released| *released).await;
    }
    (status, out, bytes).into_response()
}

impl Relay {
    /// Relays to `target` (`http://127.0.0.1:PORT`, no path).
    pub async fn start(target: &str) -> Self {
        let state = RelayState {
            target: Arc::new(Mutex::new(target.trim_end_matches('/').to_owned())),
            mode: Arc::new(Mutex::new(Mode::Open)),
            seen: Arc::default(),
            released: tokio::sync::watch::channel(false).0,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
        };
        let app = axum::Router::new()
            .fallback(relay)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Relays to `target` from now on (a load balancer moving to another instance).
    pub fn retarget(&self, target: &str) {
        *self.state.target.lock().unwrap() = target.trim_end_matches('/').to_owned();
    }

    /// Lets the answers [`Mode::HoldCreated`] holds go, and every later one.
    pub fn release(&self) {
        self.state.released.send_replace(true);
    }

    pub fn set(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Every request so far, as `METHOD /path?query`.
    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }

    /// How many requests started with `prefix` (e.g. `"POST /v1.0/subscriptions"`).
    pub fn count(&self, prefix: &str) -> usize {
        self.seen().iter().filter(|s| s.starts_with(prefix)).count()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
