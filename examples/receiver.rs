//! The example receiver: a handler that prints every event it gets.
//!
//! Run with:
//!
//! ```text
//! cargo run --example receiver
//! # in another terminal: a notification as Graph would send it
//! curl -i http://127.0.0.1:8080/ -H 'content-type: application/json' -d '{"value":[{
//!   "subscriptionId":"7f105c7d-2dc5-4530-97cd-4e7ae6534c07","clientState":"secretClientValue",
//!   "changeType":"created","resource":"Users/622eaaff/Messages/AAMkAGU=",
//!   "subscriptionExpirationDateTime":"2026-03-19T22:11:09.952Z",
//!   "tenantId":"84bd8158-6d4d-4958-8b9f-9d6445542f95",
//!   "resourceData":{"@odata.type":"#Microsoft.Graph.Message","id":"AAMkAGU="}}]}'
//! ```

use msgraph_webhooks::{ClientState, Receiver, handler_fn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let handler = handler_fn(|event| async move {
        println!(
            "{} {} {} (subscription {}, tenant {})",
            event.change_type(),
            event.resource_kind(),
            event.resource(),
            event.subscription_id(),
            event.tenant_id().unwrap_or("-"),
        );
        Ok(())
    })
    .on_lifecycle(|event| async move {
        println!(
            "lifecycle {} for subscription {}",
            event.lifecycle_event(),
            event.subscription_id()
        );
        Ok(())
    });

    let receiver = Receiver::builder(handler)
        .client_state(ClientState::new("secretClientValue"))
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("listening on http://{}", listener.local_addr()?);
    receiver
        .serve(listener, &Default::default(), async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
