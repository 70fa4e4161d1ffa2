//! `msgraph-webhooks work`: only the workers, for a store that receivers
//! (`listen --workers 0`) fill.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::admin;
use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::{BoxError, Receiver, SubscriptionRegistry};

use crate::listen::WorkArgs;
use crate::store::WorkStoreArgs;

#[derive(Debug, clap::Args)]
#[command(mut_arg("tenant_ids", |arg| arg.help(
    "Accept validation tokens of these tenants only (default: any). Repeatable."
)))]
pub(crate) struct Args {
    #[command(flatten)]
    store: WorkStoreArgs,

    #[command(flatten)]
    work: WorkArgs,

    #[command(flatten)]
    admin: crate::admin::AdminArgs,
}

pub(crate) async fn run(args: Args) -> Result<ExitCode, BoxError> {
    if args.work.workers == Some(0) {
        return Err("--workers 0 leaves nothing to do".into());
    }
    let store = args.store.open().await?;
    let output = args.work.forward.output().await?;
    // The endpoint is not served here: items were authenticated on ingest.
    let mut builder = store
        .configure(Receiver::builder(output))
        .registry(Arc::new(SubscriptionRegistry::new()))
        .retry(RetryPolicy::new(
            args.work.max_attempts,
            Duration::from_secs(1),
        ));
    if let Some(workers) = args.work.workers {
        builder = builder.workers(workers);
    }
    builder = args.work.rich.configure(builder)?;
    builder = args.admin.configure(builder);
    let receiver = builder.build()?;
    receiver
        .metrics()
        .log_every_rejection(args.work.log_rejections);
    let admin = args.admin.bind().await?;
    let workers = receiver.spawn_workers();
    tracing::info!("working");
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let admin_served = async {
        match admin {
            Some(listener) => {
                let until = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                admin::serve(listener, receiver.admin_service(), until).await
            }
            None => Ok(()),
        }
    };
    let signal = async move {
        crate::shutdown_signal().await;
        let _ = stop.send(true);
    };
    let ((), admin_served) = tokio::join!(signal, admin_served);
    workers
        .shutdown(Duration::from_secs(args.work.drain_secs))
        .await;
    admin_served?;
    Ok(ExitCode::SUCCESS)
}
