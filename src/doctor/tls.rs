//! The TLS part of the doctor: a handshake of its own with the endpoint,
//! judged as Graph would judge it (TLS 1.2 or later, a publicly trusted
//! chain for the host, not about to expire).

use std::time::{Duration, Instant};

use super::{Finding, Verdict, finding, rounded};

/// What a TLS handshake with the endpoint showed.
struct TlsSession {
    version: &'static str,
    /// Why the chain does not verify for the host name, if it does not.
    untrusted: Option<String>,
    certificate: Option<crate::listener::CertSummary>,
    days_left: Option<i32>,
}

/// The `tls` check of an `https` URL: a handshake of its own, bounded by
/// `budget`, that sees the negotiated version and verifies the chain
/// against the system's roots for the URL's host (reqwest shows neither).
pub(super) async fn probe_tls(url: &url::Url, budget: Duration) -> Option<Finding> {
    if url.scheme() != "https" {
        return None;
    }
    let host = url
        .host_str()?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = url.port_or_known_default()?;
    let started = Instant::now();
    let session = match tokio::time::timeout(budget, tls_session(host, port)).await {
        Err(_) => {
            return Some(finding(
                "tls",
                Verdict::Fail,
                "tls_timeout",
                format!("no TLS handshake within {}", rounded(budget)),
                Some("check that the port serves TLS and answers promptly"),
                None,
            ));
        }
        Ok(Err(e)) => {
            return Some(finding(
                "tls",
                Verdict::Fail,
                "tls_handshake",
                format!("TLS failed: {e}"),
                Some(
                    "serve TLS 1.2 or later on this port (an https URL pointing at a plain-HTTP port fails like this)",
                ),
                None,
            ));
        }
        Ok(Ok(session)) => session,
    };
    Some(judge_tls(&session, started.elapsed()))
}

async fn tls_session(host: &str, port: u16) -> Result<TlsSession, String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let text = |e: openssl::error::ErrorStack| e.to_string();
    let tcp = tokio::net::TcpStream::connect((host, port))
        .await
        .map_err(|e| e.to_string())?;
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(text)?;
    // Finish the handshake whatever the chain, to say what is wrong with it:
    // OpenSSL still verifies it, and keeps the result.
    builder.set_verify(SslVerifyMode::NONE);
    let ssl = builder
        .build()
        .configure()
        .and_then(|c| c.into_ssl(host))
        .map_err(text)?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(text)?;
    std::pin::Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let ssl = stream.ssl();
    let verified = ssl.verify_result();
    let peer = ssl.peer_certificate();
    let days_left = peer.as_ref().and_then(|cert| {
        let now = openssl::asn1::Asn1Time::days_from_now(0).ok()?;
        Some(now.diff(cert.not_after()).ok()?.days)
    });
    Ok(TlsSession {
        version: ssl.version_str(),
        untrusted: (verified != openssl::x509::X509VerifyResult::OK)
            .then(|| verified.error_string().to_owned()),
        certificate: peer.as_deref().map(crate::listener::CertSummary::of),
        days_left,
    })
}

fn judge_tls(session: &TlsSession, elapsed: Duration) -> Finding {
    let version = session.version;
    let certificate = session
        .certificate
        .as_ref()
        .map_or_else(|| "no certificate".to_owned(), ToString::to_string);
    if !matches!(version, "TLSv1.2" | "TLSv1.3") {
        return finding(
            "tls",
            Verdict::Fail,
            "tls_version",
            format!("{version} negotiated: Graph requires TLS 1.2 or later"),
            Some("enable TLS 1.2 and 1.3 on the server"),
            Some(elapsed),
        );
    }
    if let Some(reason) = &session.untrusted {
        return finding(
            "tls",
            Verdict::Fail,
            "tls_untrusted",
            format!(
                "{version}; the certificate chain is not publicly trusted ({reason}): Graph will refuse it, as it refuses every self-signed or private-CA certificate; {certificate}"
            ),
            Some(
                "use a certificate from a public CA for this host name (Let's Encrypt: `listen --tls-cert fullchain.pem --tls-key privkey.pem`), with its intermediates in the chain file",
            ),
            Some(elapsed),
        );
    }
    if let Some(days) = session.days_left.filter(|d| *d < 14) {
        return finding(
            "tls",
            Verdict::Warn,
            "tls_expiring",
            format!(
                "{version}, chain trusted, but the certificate expires in {days} days; {certificate}"
            ),
            Some(
                "renew it: `listen --tls-cert/--tls-key` picks up the renewed files without a restart",
            ),
            Some(elapsed),
        );
    }
    finding(
        "tls",
        Verdict::Pass,
        "ok",
        format!("{version}, chain publicly trusted; {certificate}"),
        None,
        Some(elapsed),
    )
}
