//! The subscription manager against the emulator, with this crate's real
//! receiver: created once, renewed across lifetimes, recreated, lifecycle
//! automation, certificate rotation, a moving public URL, flaky handshakes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use msgraph_webhooks::crypto::{KeyRing, generate_certificate};
use msgraph_webhooks::emulator::{Change, Emulator, EmulatorBuilder};
use msgraph_webhooks::handler::HandlerEvent;
use msgraph_webhooks::retry::RetryPolicy;
use msgraph_webhooks::store::{Lease, MemoryLease, SqliteStore};
use msgraph_webhooks::store::{MemoryRecords, RecordStore};
use msgraph_webhooks::subscriptions::{
    Activity, ClientCredentials, Declared, EncryptionCertificate, GraphClient, Lifecycle,
    ManagerBuilder, Resync, ResyncReason, StaticToken, SubscriptionManager,
};
use msgraph_webhooks::tokens::Jwks;
use msgraph_webhooks::tunnel::NgrokAgent;
use msgraph_webhooks::{
    ChangeType, LifecycleEventType, Receiver, ReceiverBuilder, SubscriptionRegistry,
};
use serde_json::json;
use time::Duration as Span;
use tokio::sync::{broadcast, watch};

use crate::support::graph::{APP, Answering, Hook};
use crate::support::relay::{Mode, Relay};
use crate::support::{Recorder, TestServer};

const WAIT: Duration = Duration::from_secs(20);

/// Waits for an activity `pred` accepts (panics after 20 s).
async fn activity(
    rx: &mut broadcast::Receiver<Activity>,
    what: &str,
    pred: impl Fn(&Activity) -> bool,
) -> Activity {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut skipped = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(a)) if pred(&a) => return a,
            Ok(Ok(a)) => skipped.push(a),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(broadcast::error::RecvError::Closed)) => panic!("{what}: channel closed"),
            Err(_) => panic!("{what}: not within {WAIT:?}; saw {skipped:?}"),
        }
    }
}

fn client(emulator: &Emulator, graph_url: String) -> GraphClient {
    let tokens = ClientCredentials::new(emulator.tenant_id(), APP, "a secret")
        .token_url(emulator.token_url(emulator.tenant_id()));
    GraphClient::new(tokens)
        .base_url(graph_url)
        .retry(RetryPolicy::new(3, Duration::from_millis(20)))
}

/// A direct client, to look at (or tamper with) what Graph holds.
fn graph(emulator: &Emulator) -> GraphClient {
    GraphClient::new(StaticToken::new(emulator.app_token(APP))).base_url(emulator.graph_url())
}

fn builder(emulator: &Emulator, graph_url: String) -> ManagerBuilder {
    SubscriptionManager::builder(client(emulator, graph_url))
        .clock(Arc::new(emulator.clock().clone()))
        .handshake_retry(RetryPolicy::new(4, Duration::from_millis(20)))
}

/// An emulator, a Graph spy in front of it, a manager, and a receiver whose
/// handler is the manager's lifecycle wrapper around a [`Recorder`].
struct Rig {
    emulator: Emulator,
    spy: Relay,
    records: Arc<MemoryRecords>,
    registry: Arc<SubscriptionRegistry>,
    manager: SubscriptionManager,
    recorder: Recorder,
    resyncs: Arc<Mutex<Vec<Resync>>>,
    server: TestServer,
    url: watch::Sender<Option<String>>,
}

impl Rig {
    async fn start(
        emulator: EmulatorBuilder,
        declared: Vec<Declared>,
        tweak: impl FnOnce(ManagerBuilder) -> ManagerBuilder,
        receiver: impl FnOnce(
            &Emulator,
            ReceiverBuilder<Lifecycle<Recorder>>,
        ) -> ReceiverBuilder<Lifecycle<Recorder>>,
    ) -> Self {
        let emulator = emulator.start().await.unwrap();
        let spy = Relay::start(emulator.url()).await;
        let records = Arc::new(MemoryRecords::new());
        let registry = Arc::new(SubscriptionRegistry::new().source(records.clone()));
        let resyncs: Arc<Mutex<Vec<Resync>>> = Arc::default();
        let (url, urls) = watch::channel(None);
        let seen = resyncs.clone();
        let mut b = builder(&emulator, spy.url("/v1.0"))
            .records(records.clone())
            .lease(Arc::new(MemoryLease::new()))
            .registry(registry.clone())
            .public_urls(urls)
            .on_resync(move |resync| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(resync);
                    Ok(())
                }
            });
        for d in declared {
            b = b.declare(d);
        }
        let manager = tweak(b).build().unwrap();
        let recorder = Recorder::default();
        let server = TestServer::start(receiver(
            &emulator,
            Receiver::builder(manager.handler(recorder.clone())).registry(registry.clone()),
        ))
        .await;
        Self {
            emulator,
            spy,
            records,
            registry,
            manager,
            recorder,
            resyncs,
            server,
            url,
        }
    }

    fn resyncs(&self) -> Vec<Resync> {
        self.resyncs.lock().unwrap().clone()
    }

    /// Waits for a change event on `subscription_id`.
    async fn change_on(&self, subscription_id: &str) {
        self.recorder
            .wait_until("a change on the subscription", WAIT, |events| {
                events.iter().any(
                    |e| matches!(e, HandlerEvent::Change(c) if c.subscription_id() == subscription_id),
                )
            })
            .await;
    }
}

fn created(a: &Activity) -> Option<String> {
    match a {
        Activity::Created { id, .. } => Some(id.clone()),
        _ => None,
    }
}

#[tokio::test]
async fn created_once_even_with_two_managers_at_once() {
    let emulator = Emulator::start().await.unwrap();
    let hook = Hook::start(Answering::After(Duration::ZERO)).await;
    let spy = Relay::start(emulator.url()).await;
    let dir = tempfile::tempdir().unwrap();
    // Two handles on one store directory: two instances sharing records and the lease.
    let stores: Vec<Arc<SqliteStore>> = (0..3)
        .map(|_| Arc::new(SqliteStore::open(dir.path()).unwrap()))
        .collect();
    let declared = || {
        [
            Declared::new(
                "users/ada/messages",
                [ChangeType::Created, ChangeType::Updated],
            ),
            Declared::new("users", [ChangeType::Updated, ChangeType::Deleted]),
        ]
    };
    let manager =
        |store: &Arc<SqliteStore>, lease: Arc<dyn Lease>, records: Arc<dyn RecordStore>| {
            let mut b = builder(&emulator, spy.url("/v1.0"))
                .records(records)
                .lease(lease)
                .public_url(hook.url("/"));
            for d in declared() {
                b = b.declare(d);
            }
            let _ = store;
            b.build().unwrap()
        };
    let one = manager(&stores[0], stores[0].clone(), stores[0].clone());
    let two = manager(&stores[1], stores[1].clone(), stores[1].clone());

    let (a, b) = tokio::join!(one.reconcile(), two.reconcile());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a ^ b, "exactly one holds the lease: {a} {b}");
    assert_eq!(emulator.subscription_ids().len(), 2);
    assert_eq!(spy.count("POST /v1.0/subscriptions"), 2);
    for _ in 0..3 {
        let (a, b) = tokio::join!(one.reconcile(), two.reconcile());
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(
        spy.count("POST /v1.0/subscriptions"),
        2,
        "never created twice"
    );
    let ids = |subs: Vec<msgraph_webhooks::subscriptions::ManagedSubscription>| {
        let mut ids: Vec<String> = subs.into_iter().map(|s| s.id).collect();
        ids.sort();
        ids
    };
    let mut live = emulator.subscription_ids();
    live.sort();
    assert_eq!(ids(one.subscriptions().await.unwrap()), live);
    assert_eq!(ids(two.subscriptions().await.unwrap()), live);

    // The leader stops (keeping its subscriptions): the other takes over
    // and adopts them from the records, creating nothing.
    let (leader, follower) = if a { (one, two) } else { (two, one) };
    leader.start().stop(false).await.unwrap();
    assert!(follower.reconcile().await.unwrap(), "the lease is free now");
    assert_eq!(spy.count("POST /v1.0/subscriptions"), 2);

    // An instance that lost the lease race but shares the records (a
    // lease of its own): it finds every subscription recorded and alive.
    let split = manager(&stores[2], Arc::new(MemoryLease::new()), stores[2].clone());
    assert!(split.reconcile().await.unwrap());
    assert_eq!(spy.count("POST /v1.0/subscriptions"), 2);
    let mut now_live = emulator.subscription_ids();
    now_live.sort();
    assert_eq!(now_live, live);

    // A stranger without the records: Graph answers 409; the existing
    // subscriptions' clientStates are unknown to it, so it replaces them.
    let stranger = manager(
        &stores[2],
        Arc::new(MemoryLease::new()),
        Arc::new(MemoryRecords::new()),
    );
    let mut seen = stranger.activity();
    assert!(stranger.reconcile().await.unwrap());
    let replaced = activity(&mut seen, "a replaced subscription", |a| {
        matches!(a, Activity::Replaced { .. })
    })
    .await;
    let Activity::Replaced { id, .. } = replaced else {
        unreachable!()
    };
    assert!(live.contains(&id));
    assert_eq!(
        emulator.subscription_ids().len(),
        2,
        "still one per declaration"
    );
}

#[tokio::test]
async fn a_conflict_with_our_own_record_is_adopted() {
    // Split brain: two managers that share records but not a lease both
    // try to create at once; Graph lets one through, the other adopts it.
    let emulator = Emulator::start().await.unwrap();
    let hook = Hook::start(Answering::After(Duration::from_millis(200))).await;
    let records = Arc::new(MemoryRecords::new());
    let make = || {
        builder(&emulator, emulator.graph_url())
            .records(records.clone())
            .lease(Arc::new(MemoryLease::new()))
            .public_url(hook.url("/"))
            .declare(
                Declared::new("users/ada/messages", [ChangeType::Created]).without_lifecycle_url(),
            )
            .build()
            .unwrap()
    };
    let (one, two) = (make(), make());
    let (mut a, mut b) = (one.activity(), two.activity());
    let (r1, r2) = tokio::join!(one.reconcile(), two.reconcile());
    r1.unwrap();
    r2.unwrap();
    assert_eq!(emulator.subscription_ids().len(), 1);
    let id = emulator.subscription_ids().remove(0);
    let outcome = |rx: &mut broadcast::Receiver<Activity>| {
        let mut seen = Vec::new();
        while let Ok(a) = rx.try_recv() {
            seen.push(a);
        }
        seen
    };
    let (a, b) = (outcome(&mut a), outcome(&mut b));
    let created_by = |seen: &[Activity]| {
        seen.iter()
            .any(|x| created(x).as_deref() == Some(id.as_str()))
    };
    let adopted_by = |seen: &[Activity]| {
        seen.iter()
            .any(|x| matches!(x, Activity::Adopted { id: i, .. } if *i == id))
    };
    assert!(
        (created_by(&a) && (adopted_by(&b) || b.is_empty()))
            || (created_by(&b) && (adopted_by(&a) || a.is_empty())),
        "one created, the other adopted or saw the record: {a:?} {b:?}"
    );
    assert_eq!(one.subscriptions().await.unwrap()[0].id, id);
}

#[tokio::test]
async fn renewals_keep_subscriptions_alive_across_lifetimes() {
    let rig = Rig::start(
        Emulator::builder().time_scale(60.0),
        vec![
            Declared::new("users/ada/messages", [ChangeType::Created]).lifetime(Span::minutes(60)),
        ],
        |b| b,
        |_, r| r,
    )
    .await;
    let mut seen = rig.manager.activity();
    let running = rig.manager.start();
    rig.url.send(Some(rig.server.url("/"))).unwrap();
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    let clock = rig.emulator.clock();
    let direct = graph(&rig.emulator);
    let first = direct.get(&id).await.unwrap().expiration;

    // Five times 40 minutes: over three lifetimes of 60 minutes.
    for round in 0..5 {
        clock.advance(Span::minutes(40));
        let renewed = activity(&mut seen, "renewed", |a| {
            matches!(a, Activity::Renewed { .. })
        })
        .await;
        let Activity::Renewed {
            id: renewed_id,
            expiration,
            ..
        } = renewed
        else {
            unreachable!()
        };
        assert_eq!(renewed_id, id, "round {round}: the same subscription");
        assert!(
            expiration > clock.now() + Span::minutes(50),
            "round {round}"
        );
        let on_graph = direct.get(&id).await.unwrap();
        assert_eq!(on_graph.expiration, expiration);
    }
    assert!(
        clock.now() - first > Span::minutes(3 * 60 - 60),
        "several lifetimes passed"
    );
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&id));
    assert!(rig.spy.count(&format!("PATCH /v1.0/subscriptions/{id}")) >= 5);
    assert_eq!(
        rig.spy.count("POST /v1.0/subscriptions"),
        1,
        "never recreated"
    );

    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&id).await;

    running.stop(true).await.unwrap();
    assert!(
        rig.emulator.subscription_ids().is_empty(),
        "deleted on stop"
    );
    assert!(rig.records.all().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_deleted_subscription_is_recreated() {
    let rig = Rig::start(
        Emulator::builder().time_scale(60.0),
        vec![Declared::new("users/ada/messages", [ChangeType::Created])],
        // Graph's list is compared with the records every emulated minute (a real second).
        |b| b.check_interval(Span::minutes(1)),
        |_, r| r,
    )
    .await;
    let mut seen = rig.manager.activity();
    let _running = rig.manager.start();
    rig.url.send(Some(rig.server.url("/"))).unwrap();
    let old = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();

    graph(&rig.emulator).delete(&old).await.unwrap();
    let recreated = activity(&mut seen, "recreated", |a| {
        matches!(a, Activity::Recreated { .. })
    })
    .await;
    let Activity::Recreated { old: was, new, .. } = recreated else {
        unreachable!()
    };
    assert_eq!(was, old);
    assert_ne!(new, old);
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&new));
    let resyncs = rig.resyncs();
    assert_eq!(resyncs.len(), 1);
    assert_eq!(resyncs[0].reason, ResyncReason::Recreated);
    assert_eq!(resyncs[0].subscription_id, new);
    assert_eq!(resyncs[0].resource, "users/ada/messages");

    // The new subscription's own clientState is accepted; the old id is forgotten.
    assert!(rig.registry.check(&old, Some("anything")).is_err());
    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&new).await;
}

#[tokio::test]
async fn a_renewal_that_finds_the_subscription_gone_recreates_it() {
    let rig = Rig::start(
        Emulator::builder(),
        vec![
            Declared::new("users/ada/messages", [ChangeType::Created]).lifetime(Span::minutes(60)),
        ],
        |b| b.check_interval(Span::days(1)),
        |_, r| r,
    )
    .await;
    let mut seen = rig.manager.activity();
    let _running = rig.manager.start();
    rig.url.send(Some(rig.server.url("/"))).unwrap();
    let old = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    graph(&rig.emulator).delete(&old).await.unwrap();
    // Graph's list is unavailable: only the renewal can find out.
    rig.spy.set(Mode::RefuseGets(503));
    rig.emulator.clock().advance(Span::minutes(40));
    let recreated = activity(&mut seen, "recreated", |a| {
        matches!(a, Activity::Recreated { .. })
    })
    .await;
    let Activity::Recreated { old: was, new, .. } = recreated else {
        unreachable!()
    };
    assert_eq!(was, old);
    assert_eq!(
        rig.spy.count(&format!("PATCH /v1.0/subscriptions/{old}")),
        1,
        "the renewal got 404 and created anew instead of retrying"
    );
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&new));
    assert_eq!(rig.resyncs()[0].reason, ResyncReason::Recreated);
}

#[tokio::test]
async fn each_lifecycle_event_triggers_its_action_and_hook() {
    let rig = Rig::start(
        Emulator::builder(),
        vec![Declared::new("users/ada/messages", [ChangeType::Created])],
        |b| b,
        |_, r| r,
    )
    .await;
    let mut seen = rig.manager.activity();
    let _running = rig.manager.start();
    rig.url.send(Some(rig.server.url("/"))).unwrap();
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    let reauthorize = format!("POST /v1.0/subscriptions/{id}/reauthorize");
    let lifecycle_seen = |event: LifecycleEventType, n: usize| {
        let recorder = rig.recorder.clone();
        async move {
            recorder
                .wait_until("the handler got the lifecycle event", WAIT, |events| {
                    events
                        .iter()
                        .filter(
                            |e| matches!(e, HandlerEvent::Lifecycle(l) if *l.lifecycle_event() == event),
                        )
                        .count()
                        >= n
                })
                .await;
        }
    };

    // reauthorizationRequired → reauthorize, then the app's handler.
    rig.emulator
        .lifecycle(&id, &LifecycleEventType::ReauthorizationRequired)
        .unwrap();
    activity(&mut seen, "reauthorized", |a| {
        matches!(a, Activity::Reauthorized { .. })
    })
    .await;
    lifecycle_seen(LifecycleEventType::ReauthorizationRequired, 1).await;
    assert_eq!(rig.spy.count(&reauthorize), 1);

    // Again within 10 minutes: nothing sent (no reauthorize, no update).
    rig.emulator.clock().advance(Span::minutes(5));
    rig.emulator
        .lifecycle(&id, &LifecycleEventType::ReauthorizationRequired)
        .unwrap();
    activity(&mut seen, "skipped", |a| {
        matches!(a, Activity::ReauthorizationSkipped { .. })
    })
    .await;
    lifecycle_seen(LifecycleEventType::ReauthorizationRequired, 2).await;
    assert_eq!(rig.spy.count(&reauthorize), 1);
    assert_eq!(rig.spy.count(&format!("PATCH /v1.0/subscriptions/{id}")), 0);

    // Past the 10 minutes: reauthorized again.
    rig.emulator.clock().advance(Span::minutes(6));
    rig.emulator
        .lifecycle(&id, &LifecycleEventType::ReauthorizationRequired)
        .unwrap();
    activity(&mut seen, "reauthorized again", |a| {
        matches!(a, Activity::Reauthorized { .. })
    })
    .await;
    assert_eq!(rig.spy.count(&reauthorize), 2);

    // missed → the resync hook.
    rig.emulator
        .lifecycle(&id, &LifecycleEventType::Missed)
        .unwrap();
    activity(&mut seen, "resynced", |a| {
        matches!(
            a,
            Activity::Resynced {
                reason: ResyncReason::Missed,
                ..
            }
        )
    })
    .await;
    lifecycle_seen(LifecycleEventType::Missed, 1).await;
    assert_eq!(rig.resyncs()[0].subscription_id, id);

    // subscriptionRemoved → recreate, then the resync hook (with the new id).
    rig.emulator
        .lifecycle(&id, &LifecycleEventType::SubscriptionRemoved)
        .unwrap();
    let recreated = activity(&mut seen, "recreated", |a| {
        matches!(a, Activity::Recreated { .. })
    })
    .await;
    let Activity::Recreated { old, new, .. } = recreated else {
        unreachable!()
    };
    assert_eq!(old, id);
    activity(&mut seen, "resynced after removal", |a| {
        matches!(
            a,
            Activity::Resynced {
                reason: ResyncReason::SubscriptionRemoved,
                ..
            }
        )
    })
    .await;
    lifecycle_seen(LifecycleEventType::SubscriptionRemoved, 1).await;
    let last = rig.resyncs().pop().unwrap();
    assert_eq!(
        (last.reason, last.subscription_id.as_str()),
        (ResyncReason::SubscriptionRemoved, new.as_str())
    );
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&new));
    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&new).await;
}

#[tokio::test]
async fn rotation_moves_rich_subscriptions_and_old_notifications_still_decrypt() {
    let old_cert = generate_certificate("rotation old", 2048, 2).unwrap();
    let new_cert = generate_certificate("rotation new", 2048, 2).unwrap();
    let mut keys = KeyRing::new();
    keys.insert("cert-2025", old_cert.key().clone()).unwrap();
    keys.insert("cert-2026", new_cert.key().clone()).unwrap();
    let tenant = msgraph_webhooks::emulator::DEFAULT_TENANT_ID;
    let rig = Rig::start(
        Emulator::builder(),
        vec![Declared::new("chats/getAllMessages", [ChangeType::Created]).rich(true)],
        |b| {
            b.certificate(EncryptionCertificate::new(
                "cert-2025",
                old_cert.encryption_certificate(),
            ))
        },
        // The receiver holds both keys, and checks validation tokens with the emulator's JWKS.
        move |emulator, r| {
            r.key_ring(keys)
                .app_ids([APP])
                .tenant_ids([tenant])
                .jwks(Jwks::from_url(&emulator.jwks_url()).unwrap())
        },
    )
    .await;
    let gate = Relay::start(&rig.server.url("")).await;
    let mut seen = rig.manager.activity();
    let _running = rig.manager.start();
    rig.url.send(Some(gate.url("/"))).unwrap();
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    let direct = graph(&rig.emulator);
    assert_eq!(
        direct
            .get(&id)
            .await
            .unwrap()
            .encryption_certificate_id
            .as_deref(),
        Some("cert-2025")
    );

    // The endpoint is down; a change is encrypted to the old certificate
    // and waits in Graph's retries.
    gate.set(Mode::Refuse(503));
    rig.emulator
        .fire(
            &Change::new("chats/19:a@thread.v2/messages/1", ChangeType::Created)
                .data(json!({"id": "1", "body": {"content": "before rotation"}})),
        )
        .unwrap();

    // Rotation: the subscription moves to the new certificate.
    rig.manager.rotate_certificate(EncryptionCertificate::new(
        "cert-2026",
        new_cert.encryption_certificate(),
    ));
    let renewed = activity(&mut seen, "re-keyed", |a| {
        matches!(
            a,
            Activity::Renewed {
                certificate_id: Some(_),
                ..
            }
        )
    })
    .await;
    assert!(
        matches!(renewed, Activity::Renewed { certificate_id: Some(ref c), .. } if c == "cert-2026")
    );
    assert_eq!(
        direct
            .get(&id)
            .await
            .unwrap()
            .encryption_certificate_id
            .as_deref(),
        Some("cert-2026")
    );
    rig.emulator
        .fire(
            &Change::new("chats/19:a@thread.v2/messages/2", ChangeType::Created)
                .data(json!({"id": "2", "body": {"content": "after rotation"}})),
        )
        .unwrap();

    // The endpoint is back; Graph's retry (an emulated hour later) brings both.
    gate.set(Mode::Open);
    rig.emulator.clock().advance(Span::hours(1));
    let events = rig
        .recorder
        .wait_until("both changes", WAIT, |events| {
            events
                .iter()
                .filter(|e| matches!(e, HandlerEvent::Change(_)))
                .count()
                >= 2
        })
        .await;
    let mut by_certificate: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            HandlerEvent::Change(c) => Some((
                c.notification()
                    .encrypted_content
                    .as_ref()
                    .unwrap()
                    .encryption_certificate_id
                    .clone(),
                c.data().unwrap()["body"]["content"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            )),
            _ => None,
        })
        .collect();
    by_certificate.sort();
    assert_eq!(
        by_certificate,
        [
            ("cert-2025".to_owned(), "before rotation".to_owned()),
            ("cert-2026".to_owned(), "after rotation".to_owned()),
        ]
    );
}

/// A stand-in for the ngrok agent's `GET /api/tunnels`.
async fn agent(tunnels: Arc<Mutex<serde_json::Value>>) -> String {
    let app = axum::Router::new().route(
        "/api/tunnels",
        axum::routing::get(move || {
            let tunnels = tunnels.clone();
            async move { axum::Json(tunnels.lock().unwrap().clone()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn tunnels(public_url: &str) -> serde_json::Value {
    // The emulator takes http:// on loopback, so the "public" URL is a
    // loopback one; the agent calls its tunnel https as ngrok does.
    json!({"tunnels": [{"name": "command_line", "public_url": public_url, "proto": "https",
        "config": {"addr": "http://localhost:8080", "inspect": true}}]})
}

#[tokio::test]
async fn subscriptions_follow_a_new_ngrok_url() {
    let emulator = Emulator::start().await.unwrap();
    let records = Arc::new(MemoryRecords::new());
    let registry = Arc::new(SubscriptionRegistry::new().source(records.clone()));
    let first_url = Arc::new(Mutex::new(json!({"tunnels": []})));
    let api = agent(first_url.clone()).await;
    let urls = NgrokAgent::new(api).watch(8080, Duration::from_millis(50));
    let manager = builder(&emulator, emulator.graph_url())
        .records(records.clone())
        .registry(registry.clone())
        .public_urls(urls)
        .declare(Declared::new("users/ada/messages", [ChangeType::Created]))
        .declare(Declared::new("users/bob/messages", [ChangeType::Created]).without_lifecycle_url())
        .build()
        .unwrap();
    let (first, second) = (Recorder::default(), Recorder::default());
    let one = TestServer::start(
        Receiver::builder(manager.handler(first.clone())).registry(registry.clone()),
    )
    .await;
    let two = TestServer::start(
        Receiver::builder(manager.handler(second.clone())).registry(registry.clone()),
    )
    .await;
    let mut seen = manager.activity();
    let _running = manager.start();

    *first_url.lock().unwrap() = tunnels(&one.url(""));
    let a = created(&activity(&mut seen, "first created", |a| created(a).is_some()).await).unwrap();
    let b =
        created(&activity(&mut seen, "second created", |a| created(a).is_some()).await).unwrap();
    let direct = graph(&emulator);
    for id in [&a, &b] {
        assert_eq!(direct.get(id).await.unwrap().notification_url, one.url("/"));
    }

    // ngrok restarted with another URL: the subscription with a lifecycle
    // URL is recreated (Graph can't update that URL), the other updated.
    *first_url.lock().unwrap() = tunnels(&two.url(""));
    let mut recreated = None;
    let mut moved = None;
    while recreated.is_none() || moved.is_none() {
        match activity(&mut seen, "moved", |a| {
            matches!(
                a,
                Activity::Recreated { .. }
                    | Activity::Renewed {
                        moved_to: Some(_),
                        ..
                    }
            )
        })
        .await
        {
            Activity::Recreated { old, new, .. } => {
                assert_eq!(old, a);
                recreated = Some(new);
            }
            Activity::Renewed { id, moved_to, .. } => {
                assert_eq!(id, b);
                assert_eq!(moved_to.as_deref(), Some(two.url("/").as_str()));
                moved = Some(id);
            }
            _ => unreachable!(),
        }
    }
    let a2 = recreated.unwrap();
    let on_graph = direct.get(&a2).await.unwrap();
    assert_eq!(on_graph.notification_url, two.url("/"));
    assert_eq!(
        on_graph.lifecycle_notification_url,
        Some(two.url("/lifecycle"))
    );
    assert_eq!(direct.get(&b).await.unwrap().notification_url, two.url("/"));

    emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    emulator
        .fire(&Change::new("users/bob/messages", ChangeType::Created))
        .unwrap();
    second
        .wait_until("both changes at the new URL", WAIT, |events| {
            events.len() >= 2
        })
        .await;
    assert!(first.events().is_empty());
}

#[tokio::test]
async fn a_flaky_handshake_is_retried() {
    let emulator = Emulator::start().await.unwrap();
    let recorder = Recorder::default();
    let server = TestServer::start(
        Receiver::builder(recorder.clone())
            .client_state(msgraph_webhooks::ClientState::new("unused")),
    )
    .await;
    let gate = Relay::start(&server.url("")).await;
    gate.set(Mode::FailHandshakes(2));
    let manager = builder(&emulator, emulator.graph_url())
        .public_url(gate.url("/"))
        .declare(Declared::new("users/ada/messages", [ChangeType::Created]))
        .build()
        .unwrap();
    let mut seen = manager.activity();
    assert!(manager.reconcile().await.unwrap());
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    assert_eq!(emulator.subscription_ids(), [id]);
    let validations: Vec<_> = emulator
        .deliveries()
        .into_iter()
        .filter(|d| d.kind == msgraph_webhooks::emulator::DeliveryKind::Validation)
        .collect();
    let failed = validations
        .iter()
        .filter(|d| d.outcome != msgraph_webhooks::emulator::Outcome::Delivered)
        .count();
    assert_eq!(failed, 2, "{validations:?}");
    assert!(gate.count("POST /?validationToken=") >= 3);
}

#[tokio::test]
async fn a_declaration_graph_would_refuse_is_refused_at_build_without_a_request() {
    let emulator = Emulator::start().await.unwrap();
    let spy = Relay::start(emulator.url()).await;
    let error = builder(&emulator, spy.url("/v1.0"))
        .public_url("https://example.com/")
        .declare(Declared::new("chats/getAllMessages", [ChangeType::Created]).rich(true))
        .build()
        .unwrap_err();
    assert!(
        error.to_string().contains("requires encryptionCertificate"),
        "{error}"
    );
    let error = builder(&emulator, spy.url("/v1.0"))
        .declare(Declared::new("users/ada/messages", [ChangeType::Created]).lifetime(Span::days(9)))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("10080 minutes"), "{error}");
    let clamped = builder(&emulator, spy.url("/v1.0"))
        .declare(
            Declared::new("users/ada/messages", [ChangeType::Created])
                .lifetime(Span::days(9))
                .lifetime_policy(msgraph_webhooks::subscriptions::preflight::LifetimePolicy::Clamp),
        )
        .build();
    assert!(clamped.is_ok());
    let error = builder(&emulator, spy.url("/v1.0"))
        .declare(Declared::new("users", [ChangeType::Updated]))
        .declare(Declared::new("users", [ChangeType::Updated]).key("again"))
        .build()
        .unwrap_err();
    assert!(error.to_string().contains("declared twice"), "{error}");
    assert!(spy.seen().is_empty());
}

/// The README's axum mount, with the manager: nested at the notification
/// URL's path, the lifecycle URL (`…/lifecycle`) passes Graph's handshake
/// and gets its notifications. (With `route_service` on the exact path the
/// lifecycle validation got 404 and the create never succeeded.)
#[tokio::test]
async fn the_router_nested_in_an_axum_app_serves_the_lifecycle_url_too() {
    let emulator = Emulator::builder().start().await.unwrap();
    let records = Arc::new(MemoryRecords::new());
    let registry = Arc::new(SubscriptionRegistry::new().source(records.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public = format!(
        "http://{}/graph/notifications",
        listener.local_addr().unwrap()
    );
    let manager = builder(&emulator, emulator.graph_url())
        .records(records.clone())
        .lease(Arc::new(MemoryLease::new()))
        .registry(registry.clone())
        .public_url(public.clone())
        .declare(Declared::new("users/ada/messages", [ChangeType::Created]))
        .build()
        .unwrap();
    let recorder = Recorder::default();
    let receiver = Receiver::builder(manager.handler(recorder.clone()))
        .registry(registry)
        .build()
        .unwrap();
    let workers = receiver.spawn_workers();
    let app = axum::Router::new()
        .route(
            "/hello",
            axum::routing::get(|| async { "an ordinary route" }),
        )
        .nest("/graph/notifications", receiver.router());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let mut seen = manager.activity();
    let _running = manager.start();
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    let live = graph(&emulator).get(&id).await.unwrap();
    assert_eq!(live.notification_url, public);
    assert_eq!(
        live.lifecycle_notification_url.as_deref(),
        Some(format!("{public}/lifecycle").as_str())
    );
    emulator
        .lifecycle(&id, &LifecycleEventType::ReauthorizationRequired)
        .unwrap();
    activity(&mut seen, "reauthorized", |a| {
        matches!(a, Activity::Reauthorized { .. })
    })
    .await;
    emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    recorder.wait_for(2).await;
    server.abort();
    workers.shutdown(Duration::from_secs(1)).await;
}

/// Polls `done` every 50 ms, running a pass first (panics after 20 s).
async fn pass_until(rig: &Rig, what: &str, done: impl Fn(&Rig) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        rig.manager.reconcile().await.unwrap();
        if done(rig) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}; ids {:?}, resyncs {:?}",
            rig.emulator.subscription_ids(),
            rig.resyncs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_recreate_whose_handshake_fails_keeps_the_record_and_still_resyncs() {
    let rig = Rig::start(
        Emulator::builder(),
        vec![Declared::new("users/ada/messages", [ChangeType::Created])],
        |b| b,
        |_, r| r,
    )
    .await;
    let gate = Relay::start(&rig.server.url("")).await;
    rig.url.send(Some(gate.url("/"))).unwrap();
    let mut seen = rig.manager.activity();
    assert!(rig.manager.reconcile().await.unwrap());
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();

    // Graph removes it while the endpoint fails every handshake of the
    // first recreate (4 attempts).
    gate.set(Mode::FailHandshakes(4));
    rig.emulator
        .lifecycle(&id, &LifecycleEventType::SubscriptionRemoved)
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while gate.count("POST /?validationToken=") < 5 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the recreate never failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Whoever gets there (the retried event or a pass), the subscription
    // comes back, with the resync of a removal.
    pass_until(&rig, "recreated with a resync", |rig| {
        rig.resyncs()
            .iter()
            .any(|r| r.reason == ResyncReason::SubscriptionRemoved)
    })
    .await;
    let resync = rig.resyncs().pop().unwrap();
    assert_eq!(
        rig.emulator.subscription_ids(),
        std::slice::from_ref(&resync.subscription_id)
    );
    assert_ne!(resync.subscription_id, id);
    assert!(rig.records.get_many(vec![id]).await.unwrap()[0].is_none());
    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&resync.subscription_id).await;
}

#[tokio::test]
async fn replacing_an_unknown_live_subscription_resyncs() {
    let rig = Rig::start(
        Emulator::builder(),
        vec![Declared::new("users/ada/messages", [ChangeType::Created])],
        |b| b,
        |_, r| r,
    )
    .await;
    rig.url.send(Some(rig.server.url("/"))).unwrap();
    // A live subscription of ours whose clientState the records lost (a
    // `--memory` instance killed): Graph queues notifications for it.
    let orphan = graph(&rig.emulator)
        .create(
            &msgraph_webhooks::subscriptions::NewSubscription::new(
                "users/ada/messages",
                [ChangeType::Created],
                rig.server.url("/"),
                rig.emulator.clock().now() + Span::hours(1),
            )
            .client_state(msgraph_webhooks::ClientState::new("lost with the process")),
        )
        .await
        .unwrap();
    let mut seen = rig.manager.activity();
    assert!(rig.manager.reconcile().await.unwrap());
    activity(
        &mut seen,
        "replaced",
        |a| matches!(a, Activity::Replaced { id, .. } if *id == orphan.id),
    )
    .await;
    let new = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&new));
    let resyncs = rig.resyncs();
    assert_eq!(resyncs.len(), 1, "{resyncs:?}");
    assert_eq!(
        (
            resyncs[0].reason.clone(),
            resyncs[0].subscription_id.as_str()
        ),
        (ResyncReason::Recreated, new.as_str())
    );
}

/// The emulator's clock, `by` ahead: a local clock running fast.
struct Ahead {
    clock: msgraph_webhooks::emulator::Clock,
    by: Span,
}

impl msgraph_webhooks::clock::Clock for Ahead {
    fn now(&self) -> time::OffsetDateTime {
        self.clock.now() + self.by
    }

    fn sleep_until(
        &self,
        deadline: time::OffsetDateTime,
    ) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.clock.sleep_until(deadline - self.by))
    }
}

#[tokio::test]
async fn a_local_clock_ahead_of_graphs_still_creates_and_renews() {
    let rig = Rig::start(
        Emulator::builder(),
        vec![Declared::new("users/ada/messages", [ChangeType::Created])],
        |b| b,
        |_, r| r,
    )
    .await;
    let fast = SubscriptionManager::builder(client(&rig.emulator, rig.spy.url("/v1.0")))
        .clock(Arc::new(Ahead {
            clock: rig.emulator.clock().clone(),
            by: Span::minutes(10),
        }))
        .public_url(rig.server.url("/"))
        .records(rig.records.clone())
        .registry(rig.registry.clone())
        .declare(Declared::new("users/ada/messages", [ChangeType::Created]))
        .build()
        .unwrap();
    let mut seen = fast.activity();
    assert!(fast.reconcile().await.unwrap());
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&id));
    let expiration = graph(&rig.emulator).get(&id).await.unwrap().expiration;
    assert!(expiration <= rig.emulator.clock().now() + Span::minutes(10080));
    assert!(expiration > rig.emulator.clock().now() + Span::minutes(10080 - 5));

    // Its renewal meets the same answer, and is clamped the same way.
    rig.emulator.clock().advance(Span::days(6));
    assert!(fast.reconcile().await.unwrap());
    activity(
        &mut seen,
        "renewed",
        |a| matches!(a, Activity::Renewed { id: renewed, .. } if *renewed == id),
    )
    .await;
    let renewed = graph(&rig.emulator).get(&id).await.unwrap().expiration;
    assert!(renewed > rig.emulator.clock().now() + Span::minutes(10080 - 5));
    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&id).await;
}

#[tokio::test]
async fn a_mistyped_public_url_keeps_the_subscription_until_a_good_one_replaces_it() {
    let rig = Rig::start(
        Emulator::builder(),
        vec![Declared::new("users/ada/messages", [ChangeType::Created])],
        |b| b,
        |_, r| r,
    )
    .await;
    rig.url.send(Some(rig.server.url("/"))).unwrap();
    let mut seen = rig.manager.activity();
    assert!(rig.manager.reconcile().await.unwrap());
    let id = created(&activity(&mut seen, "created", |a| created(a).is_some()).await).unwrap();

    // A restart with a public URL nothing answers at: its lifecycle URL
    // differs, so the subscription must be replaced, and the new one's
    // handshake would fail: the working one stays.
    let nowhere = Relay::start(&rig.server.url("")).await;
    nowhere.set(Mode::Refuse(404));
    rig.url.send(Some(nowhere.url("/typo"))).unwrap();
    assert!(rig.manager.reconcile().await.unwrap());
    activity(&mut seen, "failed", |a| {
        matches!(a, Activity::Failed { .. })
    })
    .await;
    assert!(rig.resyncs().is_empty());
    assert_eq!(rig.emulator.subscription_ids(), std::slice::from_ref(&id));
    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&id).await;

    // Fixed: replaced, and what the move may have missed resynced.
    rig.url.send(Some(rig.server.url("/again"))).unwrap();
    pass_until(&rig, "recreated with a resync", |rig| {
        !rig.resyncs().is_empty()
    })
    .await;
    let resync = rig.resyncs().pop().unwrap();
    assert_eq!(resync.reason, ResyncReason::Recreated);
    assert_eq!(
        rig.emulator.subscription_ids(),
        std::slice::from_ref(&resync.subscription_id)
    );
    assert_ne!(resync.subscription_id, id);
    rig.emulator
        .fire(&Change::new("users/ada/messages", ChangeType::Created))
        .unwrap();
    rig.change_on(&resync.subscription_id).await;
}
