//! `doctor` against small local servers, one per failure mode.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use msgraph_webhooks::doctor::{Options, Report, Verdict, diagnose};
use msgraph_webhooks::{ClientState, Receiver};

use crate::support::{Recorder, TestServer};

type Headers = Vec<(&'static str, String)>;
type Answer = Box<dyn Fn(&str) -> (u16, Headers, String) + Send + Sync>;
type Respond = Arc<
    dyn Fn(&http::Request<Incoming>) -> (u16, Vec<(&'static str, String)>, String, Duration)
        + Send
        + Sync,
>;

/// A server that answers every request with `respond(request)`.
async fn server(respond: Respond) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let respond = respond.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<Incoming>| {
                    let (status, headers, body, delay) = respond(&request);
                    async move {
                        tokio::time::sleep(delay).await;
                        let mut response = http::Response::new(Full::new(Bytes::from(body)));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        for (name, value) in headers {
                            response.headers_mut().insert(name, value.parse().unwrap());
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// The decoded `validationToken` of a request, if any.
fn token(request: &http::Request<Incoming>) -> Option<String> {
    url::form_urlencoded::parse(request.uri().query()?.as_bytes())
        .find(|(k, _)| k == "validationToken")
        .map(|(_, v)| v.into_owned())
}

fn text() -> Vec<(&'static str, String)> {
    vec![("content-type", "text/plain; charset=utf-8".into())]
}

/// A server that handles the handshake with `handshake` and answers
/// notifications 202.
async fn handshake_server(
    handshake: impl Fn(
        &str,
        &http::Request<Incoming>,
    ) -> (u16, Vec<(&'static str, String)>, String, Duration)
    + Send
    + Sync
    + 'static,
) -> SocketAddr {
    server(Arc::new(move |request| match token(request) {
        Some(t) => handshake(&t, request),
        None => (202, vec![], String::new(), Duration::ZERO),
    }))
    .await
}

async fn run(addr: SocketAddr, options: &Options) -> Report {
    diagnose(&format!("http://{addr}/notify"), options)
        .await
        .unwrap()
}

fn fast() -> Options {
    let mut options = Options::default();
    options.handshake_budget = Duration::from_millis(800);
    options.ack_budget = Duration::from_millis(300);
    options
}

fn diagnosis(report: &Report, check: &str) -> (Verdict, &'static str) {
    let finding = report
        .finding(check)
        .unwrap_or_else(|| panic!("no {check} finding in {report}"));
    assert!(
        finding.verdict == Verdict::Pass || finding.fix.is_some(),
        "every problem comes with a fix"
    );
    (finding.verdict, finding.diagnosis)
}

#[tokio::test]
async fn a_correct_receiver_passes() {
    let receiver = Receiver::builder(Recorder::default()).client_state(ClientState::new("s"));
    let server = TestServer::start(receiver).await;
    let report = diagnose(&server.url("/notify"), &Options::default())
        .await
        .unwrap();
    assert_eq!(diagnosis(&report, "url"), (Verdict::Warn, "not_public"));
    // The tunnel to suggest is the one for this port, not a stock 8080.
    let fix = report.finding("url").unwrap().fix.clone().unwrap();
    assert!(
        fix.contains(&format!("ngrok http {}", server.addr.port())),
        "{fix}"
    );
    assert_eq!(diagnosis(&report, "handshake"), (Verdict::Pass, "ok"));
    assert_eq!(diagnosis(&report, "notification"), (Verdict::Pass, "ok"));
    assert!(report.healthy(), "{report}");
}

#[tokio::test]
async fn nothing_listening() {
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let report = run(addr, &fast()).await;
    assert_eq!(
        diagnosis(&report, "handshake"),
        (Verdict::Fail, "connection_refused")
    );
    assert!(report.finding("notification").is_none());
    assert!(!report.healthy());
}

#[tokio::test]
async fn wrong_answers_to_the_handshake() {
    let cases: Vec<(&str, Answer)> = vec![
        ("wrong_status", Box::new(|_| (500, text(), "boom".into()))),
        ("wrong_status", Box::new(|t| (202, text(), t.to_owned()))),
        (
            "token_not_decoded",
            Box::new(|t| {
                (
                    200,
                    text(),
                    url::form_urlencoded::byte_serialize(t.as_bytes()).collect(),
                )
            }),
        ),
        (
            "token_whitespace",
            Box::new(|t| (200, text(), format!("{t}\n"))),
        ),
        (
            "token_quoted",
            Box::new(|t| {
                (
                    200,
                    vec![("content-type", "application/json".into())],
                    format!("\"{t}\""),
                )
            }),
        ),
        ("wrong_body", Box::new(|_| (200, text(), "OK".into()))),
        (
            "auth_wall",
            Box::new(|_| {
                (
                    401,
                    vec![("www-authenticate", "Bearer".into())],
                    String::new(),
                )
            }),
        ),
        ("auth_wall", Box::new(|_| (403, text(), "Forbidden".into()))),
        (
            "redirect",
            Box::new(|_| {
                (
                    301,
                    vec![("location", "https://elsewhere.example/notify".into())],
                    String::new(),
                )
            }),
        ),
        (
            "html_page",
            Box::new(|_| {
                (
                    200,
                    vec![("content-type", "text/html".into())],
                    "<!DOCTYPE html><html><body>Sign in</body></html>".into(),
                )
            }),
        ),
        (
            "ngrok_interstitial",
            Box::new(|_| {
                (200, vec![("content-type", "text/html".into())],
            "<!DOCTYPE html><html><head><title>ngrok</title></head><body>You are about to visit … ERR_NGROK_6024</body></html>".into())
            }),
        ),
    ];
    for (expected, answer) in cases {
        let answer = Arc::new(answer);
        let addr = handshake_server(move |t, _| {
            let (status, headers, body) = answer(t);
            (status, headers, body, Duration::ZERO)
        })
        .await;
        let report = run(addr, &fast()).await;
        assert_eq!(
            diagnosis(&report, "handshake"),
            (Verdict::Fail, expected),
            "{report}"
        );
        assert!(!report.healthy());
    }
}

#[tokio::test]
async fn content_type_and_a_slow_cold_start_are_warnings() {
    let addr = handshake_server(|t, _| {
        (
            200,
            vec![("content-type", "application/octet-stream".into())],
            t.to_owned(),
            Duration::ZERO,
        )
    })
    .await;
    assert_eq!(
        diagnosis(&run(addr, &fast()).await, "handshake"),
        (Verdict::Warn, "content_type")
    );

    let addr =
        handshake_server(|t, _| (200, text(), t.to_owned(), Duration::from_millis(500))).await;
    let report = run(addr, &fast()).await;
    assert_eq!(diagnosis(&report, "handshake"), (Verdict::Warn, "slow"));
    assert!(report.healthy());
    // Durations as a person reads them ("512 ms"), not "512.345678ms".
    let detail = &report.finding("handshake").unwrap().detail;
    assert!(detail.contains(" ms,"), "{detail}");
    assert!(!detail.contains('.'), "no long fractions: {detail}");
}

#[tokio::test]
async fn a_handshake_past_the_budget_fails() {
    let addr = handshake_server(|t, _| (200, text(), t.to_owned(), Duration::from_secs(3))).await;
    assert_eq!(
        diagnosis(&run(addr, &fast()).await, "handshake"),
        (Verdict::Fail, "timeout")
    );
}

#[tokio::test]
async fn notification_answers_are_judged_too() {
    let addr = server(Arc::new(|request| match token(request) {
        Some(t) => (200, text(), t, Duration::ZERO),
        None => (400, vec![], "unknown subscription".into(), Duration::ZERO),
    }))
    .await;
    let report = run(addr, &fast()).await;
    assert_eq!(diagnosis(&report, "handshake"), (Verdict::Pass, "ok"));
    assert_eq!(
        diagnosis(&report, "notification"),
        (Verdict::Fail, "rejects_unknown_items")
    );

    let addr = server(Arc::new(|request| match token(request) {
        Some(t) => (200, text(), t, Duration::ZERO),
        None => (202, vec![], String::new(), Duration::from_millis(500)),
    }))
    .await;
    assert_eq!(
        diagnosis(&run(addr, &fast()).await, "notification"),
        (Verdict::Fail, "slow_ack")
    );
}

#[tokio::test]
async fn tls_problems() {
    // An https URL pointing at a plain-HTTP port.
    let addr = handshake_server(|t, _| (200, text(), t.to_owned(), Duration::ZERO)).await;
    let report = diagnose(&format!("https://{addr}/notify"), &fast())
        .await
        .unwrap();
    assert_eq!(
        diagnosis(&report, "handshake"),
        (Verdict::Fail, "tls_handshake"),
        "{report}"
    );

    // A self-signed certificate.
    let addr = self_signed_server().await;
    let report = diagnose(
        &format!("https://localhost:{}/notify", addr.port()),
        &fast(),
    )
    .await
    .unwrap();
    assert_eq!(
        diagnosis(&report, "handshake"),
        (Verdict::Fail, "tls_certificate"),
        "{report}"
    );
    // Told to accept it, the same endpoint passes.
    let mut insecure = fast();
    insecure.accept_invalid_certs = true;
    let report = diagnose(
        &format!("https://localhost:{}/notify", addr.port()),
        &insecure,
    )
    .await
    .unwrap();
    assert_eq!(
        diagnosis(&report, "handshake"),
        (Verdict::Pass, "ok"),
        "{report}"
    );
}

/// An HTTPS server with a self-signed certificate for `localhost` that
/// echoes the handshake correctly.
async fn self_signed_server() -> SocketAddr {
    use openssl::asn1::Asn1Time;
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    use openssl::rsa::Rsa;
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509, X509NameBuilder};

    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut builder = X509::builder().unwrap();
    builder.set_version(2).unwrap();
    builder.set_subject_name(&name).unwrap();
    builder.set_issuer_name(&name).unwrap();
    builder.set_pubkey(&key).unwrap();
    builder
        .set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    builder
        .set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&builder.x509v3_context(None, None))
        .unwrap();
    builder.append_extension(san).unwrap();
    builder.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = builder.build();
    let identity = native_tls::Identity::from_pkcs8(
        &cert.to_pem().unwrap(),
        &key.private_key_to_pem_pkcs8().unwrap(),
    )
    .unwrap();
    let acceptor =
        tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let service = service_fn(|request: http::Request<Incoming>| async move {
                    let (status, body) = match token(&request) {
                        Some(t) => (200, t),
                        None => (202, String::new()),
                    };
                    let mut response = http::Response::new(Full::new(Bytes::from(body)));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    response
                        .headers_mut()
                        .insert("content-type", "text/plain; charset=utf-8".parse().unwrap());
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn the_cli_exits_0_only_for_a_healthy_endpoint() {
    let receiver = Receiver::builder(Recorder::default()).client_state(ClientState::new("s"));
    let server = TestServer::start(receiver).await;
    let mut process = crate::support::cli::Process::spawn(&["doctor", &server.url("/")], &[]);
    let first = process.next_stdout(Duration::from_secs(30)).await;
    assert!(first.contains("url"), "{first}");
    let status = process.child.wait().await.unwrap();
    assert!(status.success());

    let closed = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut process = crate::support::cli::Process::spawn(
        &["doctor", "--json", &format!("http://{closed}/")],
        &[],
    );
    let mut json = String::new();
    while let Ok(Some(line)) = process.stdout.as_mut().unwrap().next_line().await {
        json.push_str(&line);
    }
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["findings"][1]["diagnosis"], "connection_refused");
    assert!(!process.child.wait().await.unwrap().success());
}
