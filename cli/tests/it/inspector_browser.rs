//! The inspector page in a real browser: headless Chromium driven through
//! ChromeDriver (WebDriver). The page is loaded once; notifications are
//! then POSTed to the receiver and the test waits for what the page shows
//! to change without a reload: an accepted item handled, a forged one
//! rejected with its reason, a failing one dead-lettered, and its replay
//! through the page's button (with the confirmation accepted).
//!
//! The emulator's page likewise: a subscription appears, a change fired
//! through its form is delivered to a real receiver and its body opens, and
//! the clock's form moves emulated time.
//!
//! Runs when `MSGRAPH_WEBHOOKS_CHROMEDRIVER` names a chromedriver (`.ci/run`
//! installs Debian's `chromium` and `chromium-driver` and sets it); set
//! `MSGRAPH_WEBHOOKS_SCREENSHOTS=DIR` to write the page's screenshot there
//! (the README's are taken so).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use msgraph_webhooks::emulator::Emulator;

use crate::inspector::{STATE, item, post, start};
use crate::support::graph::Graph;

fn chromedriver() -> Option<String> {
    let driver = std::env::var("MSGRAPH_WEBHOOKS_CHROMEDRIVER").ok();
    if driver.is_none() {
        eprintln!(
            "MSGRAPH_WEBHOOKS_CHROMEDRIVER unset: skipping the browser test (install chromium and \
             chromium-driver, and point it at chromedriver)"
        );
    }
    driver
}

/// A chromedriver on a free port, killed when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
}

impl Driver {
    async fn start(path: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { child, url }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        let mut options = json!({
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1100", "--no-first-run"],
        });
        if let Ok(binary) = std::env::var("MSGRAPH_WEBHOOKS_CHROMIUM") {
            options["binary"] = json!(binary);
        }
        caps.insert("goog:chromeOptions".into(), options);
        ClientBuilder::native()
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a browser session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Waits until the text of `css` contains `needle`; returns how long it took.
async fn wait_text(browser: &Client, css: &str, needle: &str) -> Duration {
    wait_for(browser, css, needle, true).await
}

/// Waits until the text of `css` contains `needle` (or, with `present`
/// false, no longer does).
async fn wait_for(browser: &Client, css: &str, needle: &str, present: bool) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    loop {
        let text = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if text.contains(needle) == present {
            return started.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{css} never (un)showed {needle:?}; it shows {text:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_page_follows_deliveries_live_and_replays_a_dead_letter() {
    let Some(path) = chromedriver() else { return };
    let fixed = Arc::new(AtomicBool::new(false));
    let running = start(fixed.clone(), None).await;
    let driver = Driver::start(&path).await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("{}/inspector/", running.admin))
        .await
        .unwrap();
    wait_text(&browser, "#live", "live").await;
    let loaded = browser.current_url().await.unwrap();

    // Accepted and forged items in one delivery.
    let posted = Instant::now();
    assert_eq!(
        post(
            &running.endpoint,
            vec![
                item("1", "users/a/messages/ok", STATE),
                item("2", "users/a/messages/forged", "guessed")
            ]
        )
        .await,
        202
    );
    let acked = posted.elapsed();
    let shown = wait_text(&browser, "#deliveries tbody", "client_state_mismatch").await;
    eprintln!(
        "measured: the rejected item's reason showed {:.0} ms after the POST's answer ({:.1} ms ack)",
        shown.as_secs_f64() * 1000.0,
        acked.as_secs_f64() * 1000.0
    );
    wait_text(&browser, "#deliveries tbody", "1 handled").await;

    // The row opens to the items, with the reason's hint.
    click(&browser, "#deliveries tr.delivery").await;
    wait_text(&browser, "#deliveries tr.items", "not the one registered").await;

    // A failing item: retried, then dead-lettered, listed with a replay button.
    assert_eq!(
        post(
            &running.endpoint,
            vec![item("3", "users/a/messages/fail", STATE)]
        )
        .await,
        202
    );
    wait_text(&browser, "#deliveries tbody", "deadLettered").await;
    wait_text(&browser, "#dead-letters tbody", "failed on purpose").await;
    wait_text(&browser, "#dead-count", "1").await;
    wait_text(&browser, "#subscriptions tbody", "sub-1").await;
    screenshot("inspector.png", &browser.screenshot().await.unwrap());

    fixed.store(true, Ordering::SeqCst);
    click(&browser, "#dead-letters button.replay").await;
    let asked = browser.get_alert_text().await.unwrap();
    assert!(asked.contains("back into the inbox"), "{asked}");
    browser.accept_alert().await.unwrap();
    wait_text(&browser, "#dead-count", "0").await;
    wait_for(&browser, "#deliveries tbody", "deadLettered", false).await;
    wait_text(&browser, "#no-dead-letters", "None.").await;
    let rows = browser
        .find_all(Locator::Css("#dead-letters tbody tr"))
        .await
        .unwrap();
    assert!(rows.is_empty(), "the dead letter left the list");

    // Never reloaded, and nothing of the clientState on the page.
    assert_eq!(browser.current_url().await.unwrap(), loaded);
    let source = browser.source().await.unwrap();
    assert!(!source.contains(STATE), "the clientState is on the page");
    browser.close().await.unwrap();
    running.stop().await;
}

fn screenshot(name: &str, png: &[u8]) {
    if let Ok(dir) = std::env::var("MSGRAPH_WEBHOOKS_SCREENSHOTS") {
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

/// Clicks the first element matching `css`; the pages redraw their tables
/// every poll, so an element found just before a redraw is found again.
async fn click(browser: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let clicked = match browser.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.is_ok(),
            Err(_) => false,
        };
        if clicked {
            return;
        }
        assert!(Instant::now() < deadline, "{css} could not be clicked");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn fill(browser: &Client, css: &str, text: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(text).await.unwrap();
}

#[tokio::test]
async fn the_emulators_page_shows_subscriptions_and_fires_changes() {
    let Some(path) = chromedriver() else { return };
    let receiver = start(Arc::new(AtomicBool::new(true)), None).await;
    let graph = Graph::start(Emulator::builder()).await;
    let mut body = graph.subscription("users/ada/messages", "created,updated", &receiver.endpoint);
    body["clientState"] = json!(STATE);
    body["lifecycleNotificationUrl"] = json!(format!("{}lifecycle", receiver.endpoint));
    let created = graph.create(&graph.app_token(), &body).await;
    assert_eq!(created.status, 201, "{:?}", created.json);
    let id = created.json["id"].as_str().unwrap().to_owned();

    let driver = Driver::start(&path).await;
    let browser = driver.browser().await;
    browser
        .goto(&format!("{}/emulator/", graph.emulator.url()))
        .await
        .unwrap();
    wait_text(&browser, "#live", "live").await;
    wait_text(&browser, "#subscriptions tbody", &id).await;
    wait_text(&browser, "#quotas tbody", "1 of").await;
    let before = browser
        .find(Locator::Css("#now"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    // A change through the page's form, delivered to the receiver.
    fill(&browser, "#fire-resource", "users/ada/messages/AAMk1").await;
    fill(&browser, "#fire-data", r#"{"subject": "from the page"}"#).await;
    click(&browser, "#fire button").await;
    wait_text(&browser, "#actions-result", &id).await;
    // The newest row is the notification (the validations came before it).
    wait_text(&browser, "#deliveries tbody tr:first-child", "notification").await;
    wait_text(&browser, "#deliveries tbody tr:first-child", "delivered").await;
    wait_text(&browser, "#endpoints tbody", "normal").await;
    click(&browser, "#deliveries tr.delivery").await;
    wait_text(&browser, "#body", "AAMk1").await;
    // The receiver got it: its inspector says the item was handled.
    let page: serde_json::Value =
        reqwest::get(format!("{}/inspector/api/deliveries", receiver.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert!(page.to_string().contains("AAMk1"), "{page}");

    screenshot("emulator.png", &browser.screenshot().await.unwrap());

    // A lifecycle event, and the clock moved by a day.
    click(&browser, "#lifecycle button").await;
    wait_text(&browser, "#actions-result", "subscriptionIds").await;
    fill(&browser, "#advance-seconds", "86400").await;
    click(&browser, "#advance button").await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = browser
            .find(Locator::Css("#now"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if now != before && !now.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the clock never moved: {now}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.close().await.unwrap();
    receiver.stop().await;
}
