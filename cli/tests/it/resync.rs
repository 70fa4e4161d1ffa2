//! Resync by delta query, in the library: the engine against the emulator's
//! delta endpoints, changes through a real receiver's inbox and workers to
//! the handler — baselines, rounds from the cursor, dropped notifications,
//! sync resets, throttling, replays, durable triggers, the default handler.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use msgraph_webhooks::emulator::{Change, Emulator};
use msgraph_webhooks::handler::{HandlerEvent, handler_fn};
use msgraph_webhooks::resync::{DeltaResync, ResyncReason};
use msgraph_webhooks::store::{Backend, CursorProgress, MemoryInbox};
use msgraph_webhooks::subscriptions::{GraphClient, Removed, StaticToken};
use msgraph_webhooks::{ChangeType, Receiver, SubscriptionRegistry};
use serde_json::json;

use crate::support::{Recorder, TestServer};

const FOLDER: &str = "users/ada@contoso.com/mailFolders('Inbox')/messages";

fn client(emulator: &Emulator) -> GraphClient {
    GraphClient::new(StaticToken::new(emulator.app_token("resync-tests")))
        .base_url(emulator.graph_url())
}

/// A silent change (Graph dropped its notification) of message `id`.
fn silent(emulator: &Emulator, change_type: ChangeType, id: &str, subject: &str) {
    emulator
        .fire(
            &Change::new(FOLDER, change_type)
                .data(json!({"id": id, "subject": subject}))
                .notify(false),
        )
        .expect("the emulator applies the change");
}

/// A receiver on `backend` whose handler records every event.
async fn receiver(backend: &Backend) -> (TestServer, Recorder) {
    let recorder = Recorder::default();
    let server = TestServer::start(
        Receiver::builder(recorder.clone())
            .backend(backend)
            .registry(Arc::new(SubscriptionRegistry::allow_any())),
    )
    .await;
    (server, recorder)
}

/// The latest state per id the handler got from resyncs: `None` when removed.
fn states(recorder: &Recorder) -> BTreeMap<String, Option<String>> {
    recorder
        .resyncs()
        .iter()
        .map(|r| {
            let subject = match r.removed() {
                Some(_) => None,
                None => Some(r.data()["subject"].as_str().unwrap_or_default().to_owned()),
            };
            (r.id().to_owned(), subject)
        })
        .collect()
}

#[tokio::test]
async fn a_round_hands_over_what_changed_since_the_cursor_and_nothing_else() {
    let emulator = Emulator::builder().start().await.unwrap();
    for n in 0..7 {
        silent(
            &emulator,
            ChangeType::Created,
            &format!("old-{n}"),
            "before",
        );
    }
    let backend = Backend::memory(MemoryInbox::new(10_000));
    let (_server, recorder) = receiver(&backend).await;
    let engine = DeltaResync::builder(client(&emulator), &backend)
        .max_page_size(3)
        .build();

    // The first round at startup only sets the cursor: the 7 items before
    // it are the app's initial load, not changes.
    let baseline = engine.run(FOLDER, ResyncReason::Startup).await.unwrap();
    assert!(baseline.baseline, "{baseline:?}");
    assert_eq!(
        (baseline.pages, baseline.delivered),
        (3, 0),
        "7 items in pages of 3"
    );
    let cursor = engine.cursor(FOLDER).await.unwrap().unwrap();
    assert!(cursor.delta_link.is_some() && cursor.next_link.is_none());
    assert!(cursor.last_success_ms.is_some());

    silent(&emulator, ChangeType::Created, "new-1", "hello");
    silent(&emulator, ChangeType::Created, "new-2", "draft");
    silent(&emulator, ChangeType::Updated, "new-2", "final");
    silent(&emulator, ChangeType::Updated, "old-1", "edited");
    silent(&emulator, ChangeType::Deleted, "old-2", "");
    let round = engine.run(FOLDER, ResyncReason::Missed).await.unwrap();
    assert!(!round.baseline && round.resets == 0, "{round:?}");
    assert_eq!(round.delivered, 4, "{round:?}");

    let events = recorder
        .wait_until("four resync events", Duration::from_secs(10), |e| {
            e.len() >= 4
        })
        .await;
    assert!(events.iter().all(|e| matches!(e, HandlerEvent::Resync(_))));
    let expected: BTreeMap<String, Option<String>> = [
        ("new-1", Some("hello")),
        ("new-2", Some("final")),
        ("old-1", Some("edited")),
        ("old-2", None),
    ]
    .into_iter()
    .map(|(id, s)| (id.to_owned(), s.map(str::to_owned)))
    .collect();
    assert_eq!(states(&recorder), expected);
    for resync in recorder.resyncs() {
        assert_eq!(resync.reason(), &ResyncReason::Missed);
        assert_eq!(resync.resource(), FOLDER);
        assert!(
            resync.cursor().ends_with("/messages/delta"),
            "{}",
            resync.cursor()
        );
        if resync.id() == "old-2" {
            assert_eq!(resync.removed(), Some(&Removed::Deleted));
        }
    }
    let line = HandlerEvent::Resync(recorder.resyncs()[0].clone()).to_json();
    assert_eq!(line["kind"], "resync");
    assert_eq!(line["reason"], "missed");
    assert_eq!(line["resource"], FOLDER);

    // Nothing changed since: a round hands over nothing.
    let again = engine.run(FOLDER, ResyncReason::Periodic).await.unwrap();
    assert_eq!(again.delivered, 0, "{again:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_replayed_page_reaches_the_handler_once() {
    let emulator = Emulator::builder().start().await.unwrap();
    let backend = Backend::memory(MemoryInbox::new(10_000));
    let (_server, recorder) = receiver(&backend).await;
    let engine = DeltaResync::builder(client(&emulator), &backend).build();
    engine.run(FOLDER, ResyncReason::Startup).await.unwrap();
    let before = engine.cursor(FOLDER).await.unwrap().unwrap();
    for n in 0..5 {
        silent(&emulator, ChangeType::Created, &format!("m{n}"), "once");
    }
    engine.run(FOLDER, ResyncReason::Missed).await.unwrap();
    recorder
        .wait_until("five", Duration::from_secs(10), |e| e.len() >= 5)
        .await;

    // A crash between the inbox append and the cursor's save: the round
    // runs again from the old link, and the same five come again.
    let key = engine.cursor_key(&DeltaResync::query(FOLDER).unwrap());
    backend
        .cursors()
        .save(&key, CursorProgress::of(&before))
        .await
        .unwrap();
    let replay = engine.run(FOLDER, ResyncReason::Missed).await.unwrap();
    assert_eq!(replay.delivered, 5, "the page is fetched and stored again");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ids: Vec<String> = recorder
        .resyncs()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert_eq!(ids.len(), 5, "dedupe drops the replay: {ids:?}");
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_sync_reset_starts_over_with_a_full_sync() {
    let emulator = Emulator::builder().start().await.unwrap();
    let backend = Backend::memory(MemoryInbox::new(10_000));
    let (_server, recorder) = receiver(&backend).await;
    let engine = DeltaResync::builder(client(&emulator), &backend).build();
    for n in 0..3 {
        silent(
            &emulator,
            ChangeType::Created,
            &format!("kept-{n}"),
            "there",
        );
    }
    engine.run(FOLDER, ResyncReason::Startup).await.unwrap();
    silent(&emulator, ChangeType::Created, "after", "new");
    emulator.reset_delta(None).unwrap();

    let round = engine.run(FOLDER, ResyncReason::Missed).await.unwrap();
    assert_eq!(round.resets, 1, "{round:?}");
    // A full sync hands over every item there is: the truth, again.
    assert_eq!(round.delivered, 4, "{round:?}");
    recorder
        .wait_until("four", Duration::from_secs(10), |e| e.len() >= 4)
        .await;
    let ids: BTreeSet<String> = recorder
        .resyncs()
        .iter()
        .map(|r| r.id().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    // The cursor works again afterwards.
    assert_eq!(
        engine
            .run(FOLDER, ResyncReason::Periodic)
            .await
            .unwrap()
            .resets,
        0
    );
    emulator.shutdown().await;
}

#[tokio::test]
async fn throttled_delta_pages_are_retried_after_retry_after() {
    let emulator = Emulator::builder().start().await.unwrap();
    let backend = Backend::memory(MemoryInbox::new(10_000));
    let (_server, recorder) = receiver(&backend).await;
    let engine = DeltaResync::builder(client(&emulator), &backend).build();
    engine.run(FOLDER, ResyncReason::Startup).await.unwrap();
    silent(&emulator, ChangeType::Created, "t1", "throttled");
    emulator.throttle_delta(2, Duration::from_secs(1));
    let round = engine.run(FOLDER, ResyncReason::Missed).await.unwrap();
    assert_eq!(round.delivered, 1, "{round:?}");
    recorder
        .wait_until("one", Duration::from_secs(10), |e| !e.is_empty())
        .await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_trigger_is_stored_before_the_round_and_cleared_only_by_a_round_after_it() {
    let emulator = Emulator::builder().start().await.unwrap();
    let backend = Backend::memory(MemoryInbox::new(10_000));
    let (_server, recorder) = receiver(&backend).await;
    let engine = DeltaResync::builder(client(&emulator), &backend)
        .debounce(Duration::from_millis(50))
        .build();
    engine.run(FOLDER, ResyncReason::Startup).await.unwrap();

    // A trigger without a running loop (the process died after it): it is
    // in the store, due, with its reason.
    engine.request(FOLDER, ResyncReason::Missed).await.unwrap();
    let due = engine.cursor(FOLDER).await.unwrap().unwrap();
    assert_eq!(due.due_reason.as_deref(), Some("missed"));

    // A new engine on the same store (the restart) runs it on start.
    silent(&emulator, ChangeType::Created, "late", "caught up");
    let restarted = DeltaResync::builder(client(&emulator), &backend)
        .debounce(Duration::from_millis(50))
        .build();
    restarted.track(FOLDER).unwrap();
    let running = restarted.start();
    recorder
        .wait_until("the due round", Duration::from_secs(10), |e| !e.is_empty())
        .await;
    assert_eq!(recorder.resyncs()[0].reason(), &ResyncReason::Missed);
    let cursor = loop {
        let cursor = restarted.cursor(FOLDER).await.unwrap().unwrap();
        if cursor.due_reason.is_none() {
            break cursor;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(cursor.next_link.is_none());

    // Triggers close together make one round.
    for n in 0..3 {
        silent(
            &emulator,
            ChangeType::Created,
            &format!("burst-{n}"),
            "burst",
        );
        restarted
            .request(FOLDER, ResyncReason::Trigger)
            .await
            .unwrap();
    }
    recorder
        .wait_until("the burst", Duration::from_secs(10), |e| e.len() >= 4)
        .await;
    for resync in &recorder.resyncs()[1..] {
        assert_eq!(resync.reason(), &ResyncReason::Trigger);
    }
    running.stop().await;
    emulator.shutdown().await;
}

#[tokio::test]
async fn a_resource_without_a_delta_query_says_why() {
    let error = DeltaResync::query("users/ada@contoso.com/messages").unwrap_err();
    assert!(error.to_string().contains("mailFolders"), "{error}");
    assert!(DeltaResync::query("communications/presences/abc").is_err());
    assert!(DeltaResync::query("not a path at all ()").is_err());
}

#[tokio::test]
async fn a_handler_without_on_resync_dead_letters_the_changes_with_the_reason() {
    let emulator = Emulator::builder().start().await.unwrap();
    let backend = Backend::memory(MemoryInbox::new(10_000));
    let handler = handler_fn(|_change| async { Ok(()) });
    let _server = TestServer::start(
        Receiver::builder(handler)
            .backend(&backend)
            .registry(Arc::new(SubscriptionRegistry::allow_any()))
            .retry(msgraph_webhooks::retry::RetryPolicy::new(
                1,
                Duration::from_millis(10),
            )),
    )
    .await;
    let engine = DeltaResync::builder(client(&emulator), &backend).build();
    engine.run(FOLDER, ResyncReason::Startup).await.unwrap();
    silent(&emulator, ChangeType::Created, "unhandled", "x");
    engine.run(FOLDER, ResyncReason::Missed).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let letters = loop {
        let letters = backend.dead_letters().list(10).await.unwrap();
        if !letters.is_empty() || tokio::time::Instant::now() > deadline {
            break letters;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(letters.len(), 1, "the change is kept, not dropped");
    assert!(
        letters[0].reason.contains("on_resync"),
        "{}",
        letters[0].reason
    );
    emulator.shutdown().await;
}
