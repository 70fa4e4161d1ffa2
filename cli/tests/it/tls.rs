//! HTTPS in the standalone server: deliveries and the handshake over TLS,
//! ALPN, certificate reload without dropping connections, hostile TLS
//! clients, `listen --tls-cert/--tls-key` and the doctor's TLS check.
//! Certificates come from a test CA made here; clients trust that CA only.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use msgraph_webhooks::doctor::{self, Options, Verdict};
use msgraph_webhooks::listener::{ServerConfig, TlsConfig};
use msgraph_webhooks::{ClientState, Receiver};
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslConnector, SslMethod, SslVersion};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509NameBuilder};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::cli::Process;
use crate::support::{Recorder, TestServer, envelope, message_item};

const STATE: &str = "secretClientValue";
const POLL: Duration = Duration::from_millis(100);

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

/// A test CA, and the server certificates it signs.
struct Pki {
    key: PKey<Private>,
    ca: X509,
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Self {
        let key = key();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "msgraph-webhooks test CA")
            .unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial(1)).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        Self {
            key,
            ca: b.build(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn ca_pem(&self) -> Vec<u8> {
        self.ca.to_pem().unwrap()
    }

    /// A certificate for 127.0.0.1 and localhost with this CN and serial:
    /// (certificate PEM, key PEM).
    fn issue(&self, cn: &str, serial_no: u32) -> (Vec<u8>, Vec<u8>) {
        let key = key();
        let mut name = X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", cn).unwrap();
        let name = name.build();
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_serial_number(&serial(serial_no)).unwrap();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(self.ca.subject_name()).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        b.set_not_after(&Asn1Time::days_from_now(30).unwrap())
            .unwrap();
        b.append_extension(BasicConstraints::new().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()
                .unwrap(),
        )
        .unwrap();
        b.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap())
            .unwrap();
        let san = SubjectAlternativeName::new()
            .dns("localhost")
            .ip("127.0.0.1")
            .build(&b.x509v3_context(Some(&self.ca), None))
            .unwrap();
        b.append_extension(san).unwrap();
        b.sign(&self.key, MessageDigest::sha256()).unwrap();
        (
            b.build().to_pem().unwrap(),
            key.private_key_to_pem_pkcs8().unwrap(),
        )
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.path().join("fullchain.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("privkey.pem")
    }

    /// Writes a new certificate and key to the two files.
    fn install(&self, cn: &str, serial_no: u32) {
        let (cert, key) = self.issue(cn, serial_no);
        std::fs::write(self.cert_path(), cert).unwrap();
        std::fs::write(self.key_path(), key).unwrap();
    }

    fn tls(&self) -> TlsConfig {
        TlsConfig::from_pem_files(self.cert_path(), self.key_path())
            .unwrap()
            .poll_interval(POLL)
    }

    /// A client that trusts this CA (and reports the peer certificate).
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem()).unwrap())
            .tls_info(true)
            .no_proxy()
            .build()
            .unwrap()
    }
}

fn serial(n: u32) -> Asn1Integer {
    BigNum::from_u32(n).unwrap().to_asn1_integer().unwrap()
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

async fn https_server(pki: &Pki, recorder: &Recorder, config: ServerConfig) -> TestServer {
    let mut config = config;
    config.tls = Some(pki.tls());
    let builder = Receiver::builder(recorder.clone()).client_state(ClientState::new(STATE));
    TestServer::start_with(builder, config).await
}

fn url(server: &TestServer, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", server.addr.port())
}

/// The serial of the certificate the server presented for `response`.
fn served_serial(response: &reqwest::Response) -> String {
    let info = response
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls_info is on");
    let der = info
        .peer_certificate()
        .expect("the server sent a certificate");
    let cert = X509::from_der(der).unwrap();
    cert.serial_number()
        .to_bn()
        .unwrap()
        .to_dec_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn tls_delivery_and_validation_handshake_over_https() {
    let pki = Pki::new();
    pki.install("receiver one", 2);
    let recorder = Recorder::default();
    let server = https_server(&pki, &recorder, ServerConfig::default()).await;
    let client = pki.client();

    let answer = client
        .post(url(&server, "/notify?validationToken=hello%20Graph"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "hello Graph");

    let body = envelope(vec![message_item("sub-1", STATE, 1)]);
    let answer = client
        .post(url(&server, "/notify"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    let changes = recorder.changes_after(1).await;
    assert_eq!(changes[0].subscription_id(), "sub-1");
    server.stop().await;
}

#[tokio::test]
async fn tls_alpn_offers_h2_only_when_http2_is_on() {
    let pki = Pki::new();
    pki.install("receiver", 2);
    let recorder = Recorder::default();
    let plain = https_server(&pki, &recorder, ServerConfig::default()).await;
    let mut config = ServerConfig::default();
    config.http2 = true;
    let h2 = https_server(&pki, &recorder, config).await;
    // reqwest offers h2 and http/1.1 by ALPN.
    let client = pki.client();
    let answer = client.get(url(&plain, "/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_11);
    let answer = client.get(url(&h2, "/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
    // A delivery over h2 is acknowledged like any other.
    let answer = client
        .post(url(&h2, "/notify"))
        .header("content-type", "application/json")
        .body(envelope(vec![message_item("sub-1", STATE, 1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);
    assert_eq!(answer.version(), reqwest::Version::HTTP_2);
}

#[tokio::test]
async fn tls_reload_serves_new_connections_the_new_certificate_and_keeps_old_ones() {
    let pki = Pki::new();
    pki.install("before renewal", 2);
    let recorder = Recorder::default();
    let server = https_server(&pki, &recorder, ServerConfig::default()).await;
    // One pooled connection, opened before the renewal.
    let old = pki.client();
    let answer = old.get(url(&server, "/healthz")).send().await.unwrap();
    assert_eq!(served_serial(&answer), "2");

    pki.install("after renewal", 3);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        // A new client: a new connection and handshake.
        let answer = pki
            .client()
            .get(url(&server, "/healthz"))
            .send()
            .await
            .unwrap();
        if served_serial(&answer) == "3" {
            break;
        }
        assert!(Instant::now() < deadline, "the renewal was not picked up");
        tokio::time::sleep(POLL / 2).await;
    }
    // The connection from before still works, with the certificate it had.
    let answer = old.get(url(&server, "/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(
        served_serial(&answer),
        "2",
        "the same connection, kept open"
    );

    // A broken pair (a key that is not the certificate's) is not taken.
    let (_, other_key) = pki.issue("stray", 4);
    std::fs::write(pki.key_path(), other_key).unwrap();
    tokio::time::sleep(POLL * 5).await;
    let answer = pki
        .client()
        .get(url(&server, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(served_serial(&answer), "3", "the last good pair stays");
    server.stop().await;
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut sink = vec![0; 4096];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut sink)).await {
            Err(_) => panic!("the server kept the connection open past {limit:?}"),
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => {}
        }
    }
}

/// A real ClientHello, as OpenSSL writes it, captured without a server.
fn client_hello() -> Vec<u8> {
    struct Capture(Vec<u8>);
    impl std::io::Read for Capture {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
    }
    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let connector = SslConnector::builder(SslMethod::tls_client())
        .unwrap()
        .build();
    match connector.connect("localhost", Capture(Vec::new())) {
        Err(openssl::ssl::HandshakeError::WouldBlock(mid)) => mid.get_ref().0.clone(),
        _ => panic!("the handshake waits for the server"),
    }
}

#[tokio::test]
async fn tls_silent_and_stalled_handshakes_are_closed_after_the_header_timeout() {
    let pki = Pki::new();
    pki.install("receiver", 2);
    let recorder = Recorder::default();
    let mut config = ServerConfig::default();
    config.header_read_timeout = Duration::from_millis(400);
    let server = https_server(&pki, &recorder, config).await;

    // Connects, sends nothing.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(3)).await;
    assert!(took >= Duration::from_millis(300), "closed early: {took:?}");

    // Sends its ClientHello, then never answers the server's flight.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&client_hello()).await.unwrap();
    let mut head = [0u8; 1];
    stalled.read_exact(&mut head).await.unwrap();
    assert_eq!(
        head[0], 0x16,
        "the server answered with a TLS handshake record"
    );
    let took = closed_within(&mut stalled, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(2), "{took:?}");

    // Half a ClientHello.
    let hello = client_hello();
    let mut half = TcpStream::connect(server.addr).await.unwrap();
    half.write_all(&hello[..hello.len() / 2]).await.unwrap();
    closed_within(&mut half, Duration::from_secs(3)).await;

    // The server still serves.
    let answer = pki
        .client()
        .get(url(&server, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

#[tokio::test]
async fn tls_handshakes_in_progress_count_against_the_connection_cap() {
    let pki = Pki::new();
    pki.install("receiver", 2);
    let recorder = Recorder::default();
    let mut config = ServerConfig::default();
    config.max_connections = 1;
    config.header_read_timeout = Duration::from_secs(30);
    let server = https_server(&pki, &recorder, config).await;
    // Holds the only slot with a handshake it never finishes.
    let mut stalled = TcpStream::connect(server.addr).await.unwrap();
    stalled.write_all(&client_hello()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // A real client takes its slot: the stalled one is shed long before
    // its 30 s.
    let answer = pki
        .client()
        .get(url(&server, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let took = closed_within(&mut stalled, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
}

#[tokio::test]
async fn tls_plain_http_garbage_and_tls_1_1_get_nothing_and_the_server_goes_on() {
    let pki = Pki::new();
    pki.install("receiver", 2);
    let recorder = Recorder::default();
    let server = https_server(&pki, &recorder, ServerConfig::default()).await;

    // Plain HTTP to the TLS port: no HTTP answer.
    let reply = crate::support::http::raw(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(!reply.contains("HTTP/"), "{reply:?}");
    let reply = crate::support::http::raw(
        server.addr,
        &[0x16, 0x03, 0x01, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7],
        Duration::from_secs(2),
    )
    .await;
    assert!(!reply.contains("HTTP/"), "{reply:?}");

    // A client that speaks at most TLS 1.1 (allowed to offer it at all by
    // the lowest security level) is refused by the server.
    let addr = server.addr;
    let ca = pki.ca_pem();
    let refused = tokio::task::spawn_blocking(move || {
        let mut builder = SslConnector::builder(SslMethod::tls_client()).unwrap();
        builder.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
        builder
            .set_min_proto_version(Some(SslVersion::TLS1))
            .unwrap();
        builder
            .set_max_proto_version(Some(SslVersion::TLS1_1))
            .unwrap();
        builder
            .cert_store_mut()
            .add_cert(X509::from_pem(&ca).unwrap())
            .unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        match builder.build().connect("localhost", tcp) {
            Ok(mut stream) => {
                let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
                let mut out = String::new();
                let _ = stream.read_to_string(&mut out);
                Err(format!("a TLS 1.1 handshake succeeded: {out:?}"))
            }
            Err(e) => Ok(e.to_string()),
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        refused.contains("protocol version") || refused.contains("unsupported protocol"),
        "refused by the server, not by the client's own configuration: {refused}"
    );

    let answer = pki
        .client()
        .get(url(&server, "/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(server.metrics.connections_closed_count("tls_handshake") >= 3);
}

#[tokio::test]
async fn tls_listen_serves_https_reloads_and_the_doctor_says_graph_will_not_trust_it() {
    let pki = Pki::new();
    pki.install("listen", 2);
    let (cert, key) = (pki.cert_path(), pki.key_path());
    let mut listen = Process::spawn(
        &[
            "listen",
            "--addr",
            "127.0.0.1:0",
            "--memory",
            "--tls-cert",
            path_str(&cert),
            "--tls-key",
            path_str(&key),
        ],
        &[
            ("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE),
            ("MSGRAPH_WEBHOOKS_TLS_RELOAD_SECS", "0.1"),
        ],
    );
    let line = listen.wait_for_log("listening").await;
    assert!(line.contains("tls=on"), "{line}");
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("local="))
        .unwrap()
        .parse()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", addr.port());
    let answer = pki
        .client()
        .post(format!("{base}/notify?validationToken=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "abc");

    // The doctor sees TLS 1.2+, and a chain no public CA vouches for.
    let report = doctor::diagnose(&format!("{base}/notify"), &Options::default())
        .await
        .unwrap();
    let tls = report
        .finding("tls")
        .expect("an https URL gets a tls check");
    assert_eq!(tls.verdict, Verdict::Fail, "{report}");
    assert_eq!(tls.diagnosis, "tls_untrusted", "{report}");
    assert!(tls.detail.contains("TLSv1.3"), "{}", tls.detail);
    assert!(
        tls.detail.contains("not publicly trusted"),
        "{}",
        tls.detail
    );
    assert!(tls.detail.contains("CN=listen"), "{}", tls.detail);
    assert!(tls.detail.contains("127.0.0.1"), "{}", tls.detail);
    assert!(!report.healthy());

    // A broken renewal is logged and the old certificate stays.
    std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\nnot a key\n").unwrap();
    let warned = listen.wait_for_log("cannot be used").await;
    assert!(warned.contains("WARN"), "{warned}");
    assert!(warned.contains("private key"), "{warned}");
    let answer = pki
        .client()
        .get(format!("{base}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    listen.terminate();
    assert!(listen.child.wait().await.unwrap().success());
}

#[tokio::test]
async fn tls_listen_needs_both_files() {
    let pki = Pki::new();
    pki.install("listen", 2);
    let cert = pki.cert_path();
    let mut listen = Process::spawn(
        &["listen", "--memory", "--tls-cert", path_str(&cert)],
        &[("MSGRAPH_WEBHOOKS_CLIENT_STATE", STATE)],
    );
    let status = listen.child.wait().await.unwrap();
    assert!(!status.success());
}
