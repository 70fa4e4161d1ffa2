//! `msgraph-webhooks emulate`: the local Graph.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::emulator::{ApiLimits, Emulator};
use msgraph_webhooks::tokens::TokenVersion;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub(crate) enum Version {
    V1,
    V2,
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Address to listen on.
    #[arg(
        long,
        default_value = "127.0.0.1:4000",
        env = "MSGRAPH_WEBHOOKS_EMULATOR_ADDR"
    )]
    addr: SocketAddr,

    /// The tenant of tokens issued for `common`, `organizations` or a domain.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_TENANT_ID")]
    tenant_id: Option<String>,

    /// Application permissions clients get from the token endpoint
    /// (comma-separated); default: every application permission of the catalog.
    #[arg(
        long,
        value_delimiter = ',',
        env = "MSGRAPH_WEBHOOKS_EMULATOR_APP_PERMISSIONS"
    )]
    app_permissions: Option<Vec<String>>,

    /// Emulated seconds per real second for retries, throttling windows,
    /// expirations and reauthorization notices (3600: an hour per second).
    #[arg(
        long,
        default_value_t = 1.0,
        env = "MSGRAPH_WEBHOOKS_EMULATOR_TIME_SCALE"
    )]
    time_scale: f64,

    /// How much faster than Graph's the timeouts run (10: 3 s becomes 300 ms).
    #[arg(
        long,
        default_value_t = 1.0,
        env = "MSGRAPH_WEBHOOKS_EMULATOR_TIMEOUT_SCALE"
    )]
    timeout_scale: f64,

    /// The claim set of validation tokens.
    #[arg(long, value_enum, default_value_t = Version::V1, env = "MSGRAPH_WEBHOOKS_EMULATOR_TOKEN_VERSION")]
    token_version: Version,

    /// Send `validationTokens: null` for this tenant's rich notifications (repeatable).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_MISCONFIGURED_TENANT")]
    misconfigured_tenant: Vec<String>,

    /// Accept http:// notification URLs on any host, not only loopback.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_ALLOW_HTTP")]
    allow_http: bool,

    /// Deliver `EventGrid:` subscriptions here, as an Event Grid event
    /// subscription's webhook (CloudEvents handshake, then batched CloudEvents).
    #[arg(
        long,
        value_name = "URL",
        env = "MSGRAPH_WEBHOOKS_EMULATOR_EVENT_GRID_ENDPOINT"
    )]
    event_grid_endpoint: Option<url::Url>,

    /// A drive item id that is a file, not a folder (repeatable).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_DRIVE_FILE")]
    drive_file: Vec<String>,

    /// A user without a Copilot licence (repeatable).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_COPILOT_UNLICENSED_USER")]
    copilot_unlicensed_user: Vec<String>,

    /// The tenant has no Copilot licences.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_NO_COPILOT_TENANT_LICENSE")]
    no_copilot_tenant_license: bool,

    /// Serve HTTPS only, with a certificate signed by a local CA (made once
    /// in the TLS directory, then reused: trust it once). Also writes
    /// `receiver.pem` and `receiver-key.pem` there, a certificate of that CA
    /// for `listen --tls-cert/--tls-key`, which deliveries trust.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_HTTPS")]
    https: bool,

    /// Requests to /subscriptions one app may make in one tenant per 20 s,
    /// writes and reads alike (Graph: 2000); more get 429 with Retry-After.
    #[arg(
        long,
        value_name = "N",
        conflicts_with = "no_api_limits",
        env = "MSGRAPH_WEBHOOKS_EMULATOR_API_LIMIT"
    )]
    api_limit: Option<u32>,

    /// Do not throttle /subscriptions at all.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_EMULATOR_NO_API_LIMITS")]
    no_api_limits: bool,

    /// Where the local CA is kept (`ca.pem`, `ca-key.pem`); default:
    /// `emulator-tls` in the data directory.
    #[arg(long, requires = "https", env = "MSGRAPH_WEBHOOKS_EMULATOR_TLS_DIR")]
    tls_dir: Option<PathBuf>,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let mut builder = Emulator::builder()
        .time_scale(args.time_scale)
        .timeout_scale(args.timeout_scale)
        .token_version(match args.token_version {
            Version::V1 => TokenVersion::V1,
            Version::V2 => TokenVersion::V2,
        })
        .allow_http(args.allow_http)
        .copilot_tenant_licensed(!args.no_copilot_tenant_license);
    if let Some(url) = args.event_grid_endpoint {
        builder = builder.event_grid_endpoint(url);
    }
    if let Some(tenant) = args.tenant_id {
        builder = builder.tenant_id(tenant);
    }
    if let Some(permissions) = args.app_permissions {
        builder = builder.app_permissions(permissions);
    }
    for tenant in args.misconfigured_tenant {
        builder = builder.misconfigured_tenant(tenant);
    }
    for item in args.drive_file {
        builder = builder.drive_file(item);
    }
    for user in args.copilot_unlicensed_user {
        builder = builder.copilot_unlicensed_user(user);
    }
    if args.no_api_limits {
        builder = builder.api_limits(ApiLimits::unlimited());
    } else if let Some(limit) = args.api_limit {
        let mut limits = ApiLimits::default();
        limits.writes_per_app_per_tenant = limit;
        limits.requests_per_app_per_tenant = limit;
        builder = builder.api_limits(limits);
    }
    if args.https {
        let dir = match args.tls_dir {
            Some(dir) => dir,
            None => directories::ProjectDirs::from("", "", "msgraph-webhooks")
                .map(|dirs| dirs.data_dir().join("emulator-tls"))
                .ok_or("no home directory to put the local CA in: pass --tls-dir")?,
        };
        builder = builder.https(dir);
    }
    let listener = tokio::net::TcpListener::bind(args.addr)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.addr))?;
    let emulator = builder.start_on(listener)?;
    // Made (or checked) before anything is printed: making a key takes a
    // moment, and the shutdown signal is only listened for after the hints.
    let receiver = if args.https {
        Some(emulator.receiver_certificate_files()?)
    } else {
        None
    };
    let base = emulator.url();
    tracing::info!(
        graph = %format!("{base}/v1.0"),
        token = %format!("{base}/common/oauth2/v2.0/token"),
        jwks = %format!("{base}/common/discovery/v2.0/keys"),
        control = %format!("{base}/emulator"),
        "the local Graph"
    );
    if let Some(ca) = emulator.ca_path() {
        let ca = ca.display();
        tracing::info!(ca = %ca, "HTTPS: the certificate is signed by the local CA; trust it once");
        tracing::info!(
            "trust the CA: Python SSL_CERT_FILE={ca} or REQUESTS_CA_BUNDLE={ca}; Node NODE_EXTRA_CA_CERTS={ca}; \
             Debian/Ubuntu: sudo cp {ca} /usr/local/share/ca-certificates/msgraph-webhooks-emulator.crt && sudo update-ca-certificates; \
             macOS: sudo security add-trusted-cert -d -r trustRoot -k /Library/Keychains/System.keychain {ca}"
        );
    }
    if let Some((cert, key)) = receiver {
        tracing::info!(
            "an HTTPS receiver the deliveries trust: msgraph-webhooks listen --tls-cert {} --tls-key {}",
            cert.display(),
            key.display()
        );
    }
    crate::shutdown_signal().await;
    emulator.shutdown().await;
    Ok(ExitCode::SUCCESS)
}
