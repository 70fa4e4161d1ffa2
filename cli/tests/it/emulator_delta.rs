//! Delta queries on the emulator's data: rounds and pages, changes since a
//! delta link (including dropped notifications), `$select`, page sizes,
//! `latest`, expiry, sync resets, throttling, permissions and hostile tokens.

use std::collections::HashSet;
use std::time::Duration;

use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::{Change, Emulator};
use serde_json::{Value, json};

use crate::support::graph::{APP, Answer, Graph, Hook};

const FOLDER: &str = "users/ada/mailFolders('Inbox')/messages";
const FOLDER_DELTA: &str = "/v1.0/users/ada/mailFolders('Inbox')/messages/delta";

async fn graph() -> Graph {
    Graph::start(Emulator::builder()).await
}

/// Seeds `n` items of `collection` with ids `{prefix}{i}` in one request.
async fn seed(graph: &Graph, collection: &str, prefix: &str, n: usize) {
    let changes: Vec<Value> = (0..n)
        .map(|i| {
            json!({"resource": collection, "changeType": "created", "notify": false,
                   "data": {"id": format!("{prefix}{i}"), "subject": format!("s{i}"), "body": "b"}})
        })
        .collect();
    let answer = graph.control("/emulator/changes", &json!(changes)).await;
    assert_eq!(answer.status, 202, "{:#}", answer.json);
    assert_eq!(answer.json["applied"].as_array().unwrap().len(), n);
}

/// GETs an absolute link.
async fn get(graph: &Graph, url: &str, token: &str, headers: &[(&str, &str)]) -> Answer {
    let base = graph.emulator.url();
    let path = url.strip_prefix(base).unwrap_or(url);
    graph.call("GET", path, Some(token), None, headers).await
}

/// Follows a round to its delta link: the items and the delta link.
async fn round(
    graph: &Graph,
    first: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> (Vec<Value>, String) {
    let mut items = Vec::new();
    let mut url = first.to_owned();
    for _ in 0..10_000 {
        let answer = get(graph, &url, token, headers).await;
        assert_eq!(answer.status, 200, "{url}: {:#}", answer.json);
        items.extend(answer.json["value"].as_array().unwrap().iter().cloned());
        if let Some(next) = answer.json["@odata.nextLink"].as_str() {
            assert!(answer.json.get("@odata.deltaLink").is_none());
            assert!(next.contains("$skiptoken="), "{next}");
            url = next.to_owned();
        } else {
            let delta = answer.json["@odata.deltaLink"]
                .as_str()
                .expect("a delta link");
            return (items, delta.to_owned());
        }
    }
    panic!("the round never ended");
}

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn emulator_delta_rounds_page_and_catch_up_on_dropped_notifications() {
    let graph = graph().await;
    let hook = Hook::start(crate::support::graph::Answering::Well).await;
    let token = graph.app_token();
    let created = graph
        .create(
            &token,
            &graph.subscription(FOLDER, "created,updated,deleted", &hook.url("/n")),
        )
        .await;
    assert_eq!(created.status, 201, "{:#}", created.json);
    seed(&graph, FOLDER, "m", 25).await;

    let (items, delta) = round(&graph, FOLDER_DELTA, &token, &[]).await;
    let got = ids(&items);
    assert_eq!(got.len(), 25);
    assert_eq!(
        got.iter().collect::<HashSet<_>>().len(),
        25,
        "each item once"
    );
    assert!(
        delta.starts_with(&format!("{}/v1.0/", graph.emulator.url())),
        "{delta}"
    );
    assert!(delta.contains("$deltatoken="), "{delta}");

    // Changes since: an update, a delete, a create (two of them never notified).
    let before = graph.emulator.deliveries().len();
    graph
        .emulator
        .fire(
            &Change::new(format!("{FOLDER}/m3"), ChangeType::Updated)
                .data(json!({"subject": "new"}))
                .notify(false),
        )
        .unwrap();
    graph
        .emulator
        .fire(&Change::new(format!("{FOLDER}/m4"), ChangeType::Deleted).notify(false))
        .unwrap();
    let fired = graph
        .emulator
        .fire(&Change::new(
            "Users/ada/mailFolders/Inbox/messages",
            ChangeType::Created,
        ))
        .unwrap();
    assert_eq!(
        fired.subscription_ids.len(),
        1,
        "notified changes still notify"
    );
    let new_id = fired.applied[0].id.clone();
    let delivered = graph
        .emulator
        .wait_for_deliveries(Duration::from_secs(5), |d| d.len() > before)
        .await;
    let notified: Vec<_> = delivered[before..].iter().filter(|d| d.items > 0).collect();
    assert_eq!(notified.len(), 1, "only the notified change was delivered");
    let items = hook.wait_items(1).await;
    assert_eq!(
        items[0]["resourceData"]["id"],
        new_id.as_str(),
        "the generated id is the notification's"
    );

    let (items, _) = round(&graph, &delta, &token, &[]).await;
    assert_eq!(items.len(), 3, "{items:#?}");
    let by_id = |id: &str| items.iter().find(|i| i["id"] == id).unwrap().clone();
    assert_eq!(by_id("m3")["subject"], "new");
    assert_eq!(by_id("m3")["body"], "b", "updates merge");
    assert_eq!(by_id("m4")["@removed"]["reason"], "deleted");
    assert!(items.iter().any(|i| i["id"] == new_id.as_str()));
}

#[tokio::test]
async fn emulator_delta_select_page_size_and_changes_during_paging() {
    let graph = graph().await;
    let token = graph.app_token();
    seed(&graph, FOLDER, "m", 7).await;
    let prefer = [("prefer", "odata.maxpagesize=3")];
    let first = get(
        &graph,
        &format!("{FOLDER_DELTA}?$select=subject"),
        &token,
        &prefer,
    )
    .await;
    assert_eq!(first.status, 200, "{:#}", first.json);
    assert_eq!(first.headers["preference-applied"], "odata.maxpagesize=3");
    assert_eq!(first.json["value"].as_array().unwrap().len(), 3);
    for item in first.json["value"].as_array().unwrap() {
        assert_eq!(item.as_object().unwrap().len(), 2, "id and subject: {item}");
    }
    let next = first.json["@odata.nextLink"].as_str().unwrap();
    assert!(
        !next.contains("select"),
        "the token remembers $select: {next}"
    );
    // A change during paging shows in the next round, not this one.
    graph
        .emulator
        .fire(&Change::new(FOLDER, ChangeType::Created).data(json!({"id": "late", "subject": "l"})))
        .unwrap();
    let (rest, delta) = round(&graph, next, &token, &prefer).await;
    assert_eq!(rest.len(), 4);
    assert!(
        rest.iter()
            .all(|i| i.get("body").is_none() && i["subject"].is_string())
    );
    let (later, _) = round(&graph, &delta, &token, &[]).await;
    assert_eq!(ids(&later), ["late"]);
    assert_eq!(
        later[0].as_object().unwrap().len(),
        2,
        "$select carried to the next round"
    );

    // Default page of messages is 10; localhost links follow the Host.
    seed(&graph, FOLDER, "x", 15).await;
    let answer = graph
        .call(
            "GET",
            FOLDER_DELTA,
            Some(&token),
            None,
            &[("host", "localhost:1234")],
        )
        .await;
    assert_eq!(answer.json["value"].as_array().unwrap().len(), 10);
    assert!(answer.headers.get("preference-applied").is_none());
    let next = answer.json["@odata.nextLink"].as_str().unwrap();
    assert!(
        next.starts_with("http://localhost:1234/v1.0/users/ada/mailFolders("),
        "{next}"
    );
}

#[tokio::test]
async fn emulator_delta_users_groups_latest_filter_and_expiry() {
    let graph = graph().await;
    let token = graph.app_token();
    for id in ["u1", "u2"] {
        graph
            .emulator
            .fire(
                &Change::new(format!("users/{id}"), ChangeType::Created)
                    .data(json!({"displayName": id})),
            )
            .unwrap();
    }
    graph
        .emulator
        .fire(&Change::new("groups('g1')", ChangeType::Created))
        .unwrap();
    let (users, _) = round(&graph, "/v1.0/users/delta", &token, &[]).await;
    assert_eq!(ids(&users), ["u1", "u2"]);
    let (groups, _) = round(
        &graph,
        "/beta/groups/microsoft.graph.delta()?$filter=id eq 'g1'",
        &token,
        &[],
    )
    .await;
    assert_eq!(ids(&groups), ["g1"]);
    let (none, _) = round(
        &graph,
        "/v1.0/groups/delta?$filter=id eq 'other'",
        &token,
        &[],
    )
    .await;
    assert!(none.is_empty());

    let latest = get(&graph, "/v1.0/users/delta?$deltatoken=latest", &token, &[]).await;
    assert_eq!(latest.status, 200, "{:#}", latest.json);
    assert_eq!(latest.json["value"], json!([]));
    let from_now = latest.json["@odata.deltaLink"].as_str().unwrap().to_owned();
    graph
        .emulator
        .fire(&Change::new("users/u2", ChangeType::Deleted).notify(false))
        .unwrap();
    let (since, delta) = round(&graph, &from_now, &token, &[]).await;
    assert_eq!(
        since,
        [json!({"id": "u2", "@removed": {"reason": "deleted"}})]
    );

    graph
        .emulator
        .clock()
        .advance(time::Duration::days(7) + time::Duration::seconds(1));
    let expired = get(&graph, &delta, &token, &[]).await;
    assert_eq!(expired.status, 400, "{:#}", expired.json);
    assert_eq!(expired.code(), "syncStateNotFound");
    assert_eq!(
        expired.message(),
        "The sync state generation is not found. The delta token is expired and data must be synchronized again."
    );
}

#[tokio::test]
async fn emulator_delta_drive_latest_expiry_and_calendar_window() {
    let graph = graph().await;
    let token = graph.app_token();
    graph
        .emulator
        .fire(
            &Change::new("drives/d1/root", ChangeType::Updated)
                .data(json!({"id": "f1", "name": "a.txt"})),
        )
        .unwrap();
    let (items, delta) = round(&graph, "/v1.0/drives/d1/root/delta", &token, &[]).await;
    assert_eq!(ids(&items), ["f1"]);
    assert!(delta.contains("?token="), "{delta}");
    let latest = get(
        &graph,
        "/v1.0/drives/d1/root/delta(token='latest')",
        &token,
        &[],
    )
    .await;
    assert_eq!(
        (latest.status, latest.json["value"].clone()),
        (200, json!([]))
    );
    let latest = get(
        &graph,
        "/v1.0/drives/d1/root/delta?token=latest",
        &token,
        &[],
    )
    .await;
    assert_eq!(latest.status, 200);

    graph
        .emulator
        .clock()
        .advance(time::Duration::days(30) + time::Duration::seconds(1));
    let expired = get(&graph, &delta, &token, &[]).await;
    assert_eq!(expired.status, 410, "{:#}", expired.json);
    assert_eq!(expired.code(), "resyncRequired");
    let location = expired.headers["location"].to_str().unwrap();
    assert!(
        location.ends_with("/v1.0/drives/d1/root/delta"),
        "{location}"
    );

    // calendarView: a window is required; events outside it are left out.
    let missing = get(&graph, "/v1.0/users/ada/calendarView/delta", &token, &[]).await;
    assert_eq!(missing.status, 400, "{:#}", missing.json);
    for (id, start) in [
        ("in", "2026-01-05T10:00:00"),
        ("out", "2027-01-05T10:00:00"),
    ] {
        graph
            .emulator
            .fire(
                &Change::new(format!("users/ada/events/{id}"), ChangeType::Created)
                    .data(json!({"start": {"dateTime": start, "timeZone": "UTC"}})),
            )
            .unwrap();
    }
    let window = "/v1.0/users/ada/calendarView/delta?startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-02-01T00:00:00Z";
    let (events, _) = round(&graph, window, &token, &[]).await;
    assert_eq!(ids(&events), ["in"]);
}

#[tokio::test]
async fn emulator_delta_reset_throttle_and_me() {
    let graph = graph().await;
    let token = graph.app_token();
    seed(&graph, FOLDER, "m", 2).await;
    let (_, delta) = round(
        &graph,
        &format!("{FOLDER_DELTA}?$select=subject"),
        &token,
        &[],
    )
    .await;
    let reset = graph
        .control(
            "/emulator/delta/reset",
            &json!({"resource": "users/ada/mailFolders/inbox/messages/delta"}),
        )
        .await;
    assert_eq!(reset.status, 200, "{:#}", reset.json);
    let gone = get(&graph, &delta, &token, &[]).await;
    assert_eq!(gone.status, 410, "{:#}", gone.json);
    assert_eq!(gone.code(), "resyncRequired");
    let location = gone.headers["location"].to_str().unwrap();
    assert!(
        location.contains("/messages/delta?$select=subject"),
        "{location}"
    );
    let (again, _) = round(&graph, location, &token, &[]).await;
    assert_eq!(again.len(), 2, "the initial query works again");
    let bad = graph
        .control("/emulator/delta/reset", &json!({"resource": "chats/delta"}))
        .await;
    assert_eq!(bad.status, 400);
    let all = graph
        .call("POST", "/emulator/delta/reset", None, None, &[])
        .await;
    assert_eq!(all.status, 200, "{:#}", all.json);

    let throttle = graph
        .control(
            "/emulator/throttle",
            &json!({"requests": 2, "retryAfter": 7}),
        )
        .await;
    assert_eq!(throttle.status, 200, "{:#}", throttle.json);
    for _ in 0..2 {
        let limited = get(&graph, FOLDER_DELTA, &token, &[]).await;
        assert_eq!(limited.status, 429);
        assert_eq!(limited.code(), "TooManyRequests");
        assert_eq!(limited.headers["retry-after"], "7");
    }
    assert_eq!(get(&graph, FOLDER_DELTA, &token, &[]).await.status, 200);
    graph.emulator.throttle_delta(1, Duration::from_secs(3));
    assert_eq!(get(&graph, FOLDER_DELTA, &token, &[]).await.status, 429);

    // `me` with a delegated token meets the user's data; app tokens cannot use `me`.
    let tenant = graph.emulator.tenant_id().to_owned();
    let user = graph
        .emulator
        .user_token(&tenant, APP, "ada", &["Mail.ReadBasic"]);
    let (mine, _) = round(
        &graph,
        "/v1.0/me/mailFolders('Inbox')/messages/delta",
        &user,
        &[],
    )
    .await;
    assert_eq!(mine.len(), 2);
    let app_me = get(
        &graph,
        "/v1.0/me/mailFolders/inbox/messages/delta",
        &token,
        &[],
    )
    .await;
    assert_eq!(app_me.status, 400);
}

#[tokio::test]
async fn emulator_delta_permissions_and_hostile_tokens() {
    let graph = graph().await;
    let weak = graph.app_token_with(&["Mail.Read"]);
    let denied = get(&graph, "/v1.0/users/delta", &weak, &[]).await;
    assert_eq!(denied.status, 403, "{:#}", denied.json);
    assert_eq!(
        get(&graph, FOLDER_DELTA, &weak, &[]).await.status,
        200,
        "Mail.Read is broader"
    );
    let missing = graph
        .call("GET", "/v1.0/users/delta", None, None, &[])
        .await;
    assert_eq!(missing.status, 401);
    let forged = graph
        .call("GET", "/v1.0/users/delta", Some("x.y.z"), None, &[])
        .await;
    assert_eq!(forged.status, 401);
    assert_eq!(
        get(&graph, "/v1.0/users/ada/delta", &graph.app_token(), &[])
            .await
            .status,
        404
    );

    let token = graph.app_token();
    let long = "A".repeat(10 * 1024);
    for garbage in ["forged", "%00%ff", "'", &long, "latest"] {
        for (path, status) in [
            (format!("/v1.0/users/delta?$deltatoken={garbage}"), 400),
            (format!("/v1.0/users/delta?$skiptoken={garbage}"), 400),
            (format!("{FOLDER_DELTA}?$deltatoken={garbage}"), 410),
            (
                format!("/v1.0/drives/d/root/delta?$skiptoken={garbage}"),
                410,
            ),
            (
                format!("/v1.0/teams/t/channels/c/messages/delta?$deltatoken={garbage}"),
                410,
            ),
        ] {
            if garbage == "latest" && status == 400 && path.contains("deltatoken") {
                continue;
            }
            let answer = get(&graph, &path, &token, &[]).await;
            assert_eq!(answer.status, status, "{path}: {:#}", answer.json);
            assert!(
                !answer.code().is_empty(),
                "Graph's envelope: {:#}",
                answer.json
            );
        }
    }
    // A token of one query is unknown to another.
    let (_, delta) = round(&graph, "/v1.0/groups/delta", &token, &[]).await;
    let token_part = delta.split("$deltatoken=").nth(1).unwrap();
    let other = get(
        &graph,
        &format!("/v1.0/users/delta?$deltatoken={token_part}"),
        &token,
        &[],
    )
    .await;
    assert_eq!(other.status, 400);
    for bad in ["", "id eq", "x"] {
        let answer = get(
            &graph,
            &format!("/v1.0/users/delta?$filter={bad}"),
            &token,
            &[],
        )
        .await;
        assert_eq!(answer.status, 400, "{bad}");
    }
}

#[tokio::test]
async fn emulator_delta_ten_thousand_items_in_pages_of_a_thousand() {
    let graph = graph().await;
    let token = graph.app_token();
    for chunk in 0..2 {
        seed(&graph, "users", &format!("c{chunk}-"), 5_000).await;
    }
    let prefer = [("prefer", "odata.maxpagesize=1000")];
    let (items, _) = round(&graph, "/v1.0/users/delta", &token, &prefer).await;
    let got = ids(&items);
    assert_eq!(got.len(), 10_000);
    assert_eq!(
        got.iter().collect::<HashSet<_>>().len(),
        10_000,
        "every id once"
    );
    let too_big = get(
        &graph,
        "/v1.0/users/delta",
        &token,
        &[("prefer", "odata.maxpagesize=5000")],
    )
    .await;
    assert_eq!(too_big.json["value"].as_array().unwrap().len(), 1000);
    assert_eq!(
        too_big.headers["preference-applied"],
        "odata.maxpagesize=1000"
    );
}
