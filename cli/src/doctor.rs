//! `msgraph-webhooks doctor URL`.

use std::process::ExitCode;
use std::time::Duration;

use msgraph_webhooks::BoxError;
use msgraph_webhooks::doctor::{self, Options};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The notification URL to probe (as you would give it to Graph).
    url: String,

    /// Print the report as JSON.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_DOCTOR_JSON")]
    json: bool,

    /// The clientState to put in the probe notification.
    #[arg(long, env = "MSGRAPH_WEBHOOKS_CLIENT_STATE", hide_env_values = true)]
    client_state: Option<crate::rich::Secret>,

    /// Seconds allowed for the handshake (Graph allows 10).
    #[arg(
        long,
        default_value_t = 10.0,
        env = "MSGRAPH_WEBHOOKS_HANDSHAKE_BUDGET_SECS"
    )]
    handshake_budget_secs: f64,

    /// Seconds allowed for a notification answer (Graph allows 3).
    #[arg(long, default_value_t = 3.0, env = "MSGRAPH_WEBHOOKS_ACK_BUDGET_SECS")]
    ack_budget_secs: f64,

    /// Accept an untrusted TLS certificate (Graph would not).
    #[arg(long, env = "MSGRAPH_WEBHOOKS_DOCTOR_INSECURE")]
    insecure: bool,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    let mut options = Options::default();
    options.handshake_budget = Duration::try_from_secs_f64(args.handshake_budget_secs)?;
    options.ack_budget = Duration::try_from_secs_f64(args.ack_budget_secs)?;
    options.accept_invalid_certs = args.insecure;
    if let Some(state) = args.client_state {
        options.client_state = msgraph_webhooks::ClientState::new(state.expose());
    }
    let report = doctor::diagnose(&args.url, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
