//! `msgraph-webhooks`: receive Microsoft Graph change notifications from the
//! command line. Thin by design: parse flags, set up logging, build from the
//! library, run.

mod admin;
mod cert;
mod delta;
mod demo;
mod dlq;
mod doctor;
mod emulate;
mod env_vars;
mod forward;
mod inspect;
mod listen;
mod rich;
mod store;
mod subscribe;
mod work;

use std::io::IsTerminal as _;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Receive Microsoft Graph change notifications.
///
/// Every flag can also be set with an environment variable, named in its
/// help: MSGRAPH_WEBHOOKS_<FLAG> (e.g. MSGRAPH_WEBHOOKS_CLIENT_STATE), with
/// the command in front for the flags of emulate, cert, doctor and delta's
/// own (MSGRAPH_WEBHOOKS_EMULATOR_ADDR, MSGRAPH_WEBHOOKS_CERT_OUT,
/// MSGRAPH_WEBHOOKS_DOCTOR_JSON, MSGRAPH_WEBHOOKS_DELTA_FROM_NOW). Keep
/// secrets there.
#[derive(Debug, Parser)]
#[command(name = "msgraph-webhooks", version, about, long_about)]
struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "MSGRAPH_WEBHOOKS_LOG_FORMAT")]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the notification endpoint; print each accepted event as a JSON line.
    Listen(Box<listen::Args>),
    /// Only process: run the workers on a store that `listen --workers 0` fills.
    Work(work::Args),
    /// List or replay the dead letters of a store.
    Dlq(dlq::Args),
    /// Run a local Microsoft Graph: subscriptions API, handshake, delivery.
    Emulate(emulate::Args),
    /// Emulator and receiver in one process: subscribe, notify, show the events.
    Demo(demo::Args),
    /// Create subscriptions and keep them alive until Ctrl-C (then delete
    /// them, unless --keep).
    Subscribe(subscribe::Args),
    /// The kind of a resource and the least-privileged permissions to
    /// subscribe to it, per permission type.
    Permissions(subscribe::PermissionsArgs),
    /// Run one round of a resource's delta query: print each change as a
    /// `resync` JSON line and keep the cursor in the store, so the next run
    /// prints only what changed since.
    Delta(delta::Args),
    /// Probe a notification URL the way Graph will, and explain what fails.
    Doctor(doctor::Args),
    /// Verify and decrypt a captured notification body offline: accepted
    /// items as JSON lines on stdout, the reason for each rejected one on
    /// stderr; exit 0 only if every item is accepted.
    Inspect(inspect::Args),
    /// Certificates for rich notifications.
    Cert(cert::Args),
}

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let (command, deprecated) = env_vars::accept_deprecated_names(Cli::command());
    let matches = command.get_matches();
    let cli = Cli::from_arg_matches(&matches)
        .map_err(|e| e.format(&mut Cli::command()))
        .unwrap_or_else(|e| e.exit());
    // The demo's story is on stdout; its servers' routine logs would only interleave.
    let level = if matches!(cli.command, Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    init_tracing(cli.log_format, level);
    env_vars::warn_deprecated(&matches, &deprecated);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Listen(args) => listen::run(*args).await,
            Command::Work(args) => work::run(args).await,
            Command::Dlq(args) => dlq::run(args).await,
            Command::Emulate(args) => emulate::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Subscribe(args) => subscribe::run(args).await,
            Command::Permissions(args) => subscribe::permissions(&args),
            Command::Delta(args) => delta::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::Cert(args) => cert::run(args),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Completes on SIGINT or SIGTERM; a second one exits the process at once.
pub(crate) async fn shutdown_signal() {
    one_signal().await;
    tracing::info!("shutdown signal received (a second one exits at once)");
    tokio::spawn(async {
        one_signal().await;
        tracing::warn!("second shutdown signal: exiting now");
        std::process::exit(130);
    });
}

/// Completes on the next SIGINT or SIGTERM.
async fn one_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
