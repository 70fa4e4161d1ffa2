//! Nest the Graph endpoint in an existing axum app, next to an ordinary
//! route: `receiver.router()` answers the notification path, its
//! `/lifecycle` (where the subscription manager points lifecycle
//! notifications) and `/healthz`.
//!
//! Run with:
//!
//! ```text
//! cargo run --example axum_route
//! curl http://127.0.0.1:3000/hello
//! curl -i -X POST 'http://127.0.0.1:3000/graph/notifications?validationToken=hello+graph'
//! curl -i -X POST 'http://127.0.0.1:3000/graph/notifications/lifecycle?validationToken=hello+graph'
//! ```

use axum::Router;
use axum::routing::get;
use msgraph_webhooks::{ClientState, Receiver, handler_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let receiver = Receiver::builder(handler_fn(|event| async move {
        println!("{} {}", event.change_type(), event.resource());
        Ok(())
    }))
    .client_state(ClientState::new("secretClientValue"))
    .build()?;

    // Nested, not route_service: that would answer the exact path only, and
    // Graph's validation of …/lifecycle would get 404. The workers run
    // beside the app.
    let workers = receiver.spawn_workers();
    let app = Router::new()
        .route("/hello", get(|| async { "an ordinary route\n" }))
        .nest("/graph/notifications", receiver.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    workers.shutdown(std::time::Duration::from_secs(10)).await;
    Ok(())
}
