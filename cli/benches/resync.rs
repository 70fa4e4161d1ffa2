//! Items per second of a delta-query resync (issue 15) into the embedded
//! durable store, against a plain client that only fetches and parses the
//! same delta round.
//!
//! Run with: `bench/resync.sh` (or `cargo bench -p msgraph-webhooks-cli
//! --bench resync`). Environment: `BENCH_ITEMS` messages in the folder
//! (default 100 000), `BENCH_ROUNDS` (default 3), `BENCH_PAGE` items per
//! page (`Prefer: odata.maxpagesize`, default 1000).
//!
//! 1. Starts the library's Graph emulator in this process (127.0.0.1) and
//!    seeds one mail folder with `BENCH_ITEMS` messages of realistic size
//!    (subject, from, toRecipients, receivedDateTime, a ~200-byte
//!    bodyPreview, flags…; ~1.3 KB of JSON each), recorded without
//!    notifications, before any clock starts.
//! 2. Each round runs four full delta rounds of the folder, in alternating
//!    order (the machine may be shared: neighbours then weigh on each
//!    alike):
//!    - **baseline**: `reqwest` follows the first URL and every
//!      `@odata.nextLink` to the `@odata.deltaLink`, reads each body and
//!      parses it into a `serde_json::Value`, counting `value`'s items, and
//!      stores nothing;
//!    - **durable**: `DeltaResync` into `Backend::sqlite` (the store
//!      `listen` uses by default, fsync per page) in a fresh data
//!      directory, `initial_sync(true)` so the new cursor's first round
//!      hands every item over; the clock stops when `run` returns, when
//!      every item is durable in the inbox (the ack boundary), and the
//!      inbox's depth is checked to be `BENCH_ITEMS`;
//!    - **memory**: the same into a fresh `MemoryInbox`, for reference;
//!    - **fetch only**: the baseline without the JSON parse (the links are
//!      cut out of the body), for reference: what the transport and the
//!      emulator alone allow.
//! 3. Prints a Markdown table (items/s, and each resync's share of the
//!    baseline of its round) and the medians.

use std::sync::Arc;
use std::time::{Duration, Instant};

use msgraph_webhooks::ChangeType;
use msgraph_webhooks::emulator::{Change, Emulator};
use msgraph_webhooks::resync::{DeltaResync, ResyncReason};
use msgraph_webhooks::store::{Backend, MemoryInbox, SqliteStore};
use msgraph_webhooks::subscriptions::{GraphClient, StaticToken};
use serde_json::{Value, json};

const USER: &str = "ada@contoso.com";
const SEED_CHUNK: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A message as Graph returns it from a mail folder's delta query.
fn message(n: usize) -> Value {
    let preview: String = format!(
        "Hi Ada, following up on item {n} from this morning's review: the numbers for the \
         quarter are in the attached sheet, and the open questions are listed below. Could \
         you have a look before Thursday?"
    );
    json!({
        "@odata.type": "#microsoft.graph.message",
        "@odata.etag": format!("W/\"CQAAABYAAAB{n:08}\""),
        "id": format!("AAMkAGI1AAAt9AHjAAA{n:010}"),
        "createdDateTime": "2026-11-30T08:14:21Z",
        "lastModifiedDateTime": "2026-11-30T08:14:23Z",
        "changeKey": format!("CQAAABYAAAB{n:08}"),
        "categories": [],
        "receivedDateTime": "2026-11-30T08:14:22Z",
        "sentDateTime": "2026-11-30T08:14:19Z",
        "hasAttachments": n.is_multiple_of(7),
        "internetMessageId": format!("<PH0PR11MB{n:08}@PH0PR11MB.namprd11.prod.outlook.com>"),
        "subject": format!("Re: Quarterly review follow-up #{n}"),
        "bodyPreview": preview,
        "importance": "normal",
        "parentFolderId": "AAMkAGI1AAAt9AHjAAAuAAAAAAEMAAA=",
        "conversationId": format!("AAQkAGI1AAAt9AHj{:06}=", n / 4),
        "isDeliveryReceiptRequested": false,
        "isReadReceiptRequested": false,
        "isRead": n.is_multiple_of(3),
        "isDraft": false,
        "webLink": format!("https://outlook.office365.com/owa/?ItemID=AAMkAGI1AAAt9AHjAAA{n:010}&exvsurl=1&viewmodel=ReadMessageItem"),
        "inferenceClassification": "focused",
        "from": {"emailAddress": {"name": "Grady Archie", "address": "GradyA@contoso.com"}},
        "sender": {"emailAddress": {"name": "Grady Archie", "address": "GradyA@contoso.com"}},
        "toRecipients": [{"emailAddress": {"name": "Ada Lovelace", "address": USER}}],
        "ccRecipients": [],
        "replyTo": [],
        "flag": {"flagStatus": "notFlagged"},
    })
}

/// The link `name` of a page, found in the body's first or last 2 KiB
/// without parsing it (the emulator writes the links before `value`, Graph
/// after it).
fn link(body: &[u8], name: &str) -> Option<String> {
    let head = &body[..body.len().min(2048)];
    let tail = &body[body.len().saturating_sub(2048)..];
    let needle = format!("\"{name}\":\"");
    [head, tail].into_iter().find_map(|part| {
        let part = String::from_utf8_lossy(part);
        let start = part.find(&needle)? + needle.len();
        let end = start + part[start..].find('"')?;
        Some(part[start..end].to_owned())
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Run {
    Fetch,
    Baseline,
    Durable,
    Memory,
}

impl Run {
    fn name(self) -> &'static str {
        match self {
            Run::Fetch => "fetch",
            Run::Baseline => "baseline",
            Run::Durable => "durable",
            Run::Memory => "memory",
        }
    }
}

struct Bench {
    emulator: Emulator,
    token: String,
    resource: String,
    items: usize,
    page: u32,
}

impl Bench {
    /// One full round with a plain client: fetch, read, parse, count
    /// (`parse`; else the links are cut out of the body's tail, unparsed).
    async fn baseline(&self, http: &reqwest::Client, parse: bool) -> Duration {
        let started = Instant::now();
        let mut url = format!("{}/{}/delta", self.emulator.graph_url(), self.resource);
        let mut seen = 0;
        loop {
            let body = http
                .get(&url)
                .bearer_auth(&self.token)
                .header("prefer", format!("odata.maxpagesize={}", self.page))
                .send()
                .await
                .expect("a delta page")
                .error_for_status()
                .expect("200")
                .bytes()
                .await
                .expect("the body");
            if !parse {
                seen += self.page.min((self.items - seen) as u32) as usize;
                match link(&body, "@odata.nextLink") {
                    Some(next) => url = next,
                    None => {
                        assert!(link(&body, "@odata.deltaLink").is_some(), "a delta link");
                        break;
                    }
                }
                continue;
            }
            let page: Value = serde_json::from_slice(&body).expect("JSON");
            seen += page["value"].as_array().map_or(0, Vec::len);
            if let Some(next) = page["@odata.nextLink"].as_str() {
                url = next.to_owned();
            } else {
                assert!(page["@odata.deltaLink"].is_string(), "a delta link");
                break;
            }
        }
        let elapsed = started.elapsed();
        assert_eq!(seen, self.items, "the baseline saw every item");
        elapsed
    }

    /// One resync round of a fresh cursor into `backend`; checks the inbox.
    async fn resync(&self, backend: &Backend) -> Duration {
        let client = GraphClient::new(StaticToken::new(self.token.clone()))
            .base_url(self.emulator.graph_url());
        let engine = DeltaResync::builder(client, backend)
            .max_page_size(self.page)
            .initial_sync(true)
            .build();
        let started = Instant::now();
        let round = engine
            .run(&self.resource, ResyncReason::Requested)
            .await
            .expect("the resync round");
        let elapsed = started.elapsed();
        assert_eq!(round.delivered, self.items as u64, "{round:?}");
        let depth = backend.inbox().stats().await.expect("stats").depth;
        assert_eq!(depth, self.items as u64, "every item is in the inbox");
        elapsed
    }
}

fn main() {
    let items = env_usize("BENCH_ITEMS", 100_000).max(1);
    let rounds = env_usize("BENCH_ROUNDS", 3).max(1);
    let page = u32::try_from(env_usize("BENCH_PAGE", 1000).clamp(1, 1000)).unwrap_or(1000);
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let emulator = Emulator::builder().start().await.expect("the emulator");
        let resource = format!("users/{USER}/mailFolders('Inbox')/messages");
        eprintln!("bench: seeding {items} messages");
        let mut bytes = 0;
        for start in (0..items).step_by(SEED_CHUNK) {
            let changes: Vec<Change> = (start..(start + SEED_CHUNK).min(items))
                .map(|n| {
                    let data = message(n);
                    bytes += data.to_string().len();
                    Change::new(&resource, ChangeType::Created)
                        .data(data)
                        .notify(false)
                })
                .collect();
            emulator.fire_all(&changes).expect("seeded");
        }
        let token = emulator.app_token("bench");
        let bench = Bench {
            emulator,
            token,
            resource,
            items,
            page,
        };
        let http = reqwest::Client::new();
        // Warm-up: connections, the emulator's caches, page faults.
        bench.baseline(&http, true).await;

        println!(
            "| round | order | fetch only (no parse) items/s | baseline (fetch + parse) items/s | resync → durable store items/s | of the baseline | resync → memory inbox items/s | of the baseline |"
        );
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        let mut rates: [Vec<f64>; 4] = Default::default();
        let (mut durable_ratios, mut memory_ratios) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let mut order = [Run::Fetch, Run::Baseline, Run::Durable, Run::Memory];
            if round % 2 == 1 {
                order.reverse();
            }
            let mut rate = [0.0; 4];
            for run in order {
                eprintln!("bench: round {}: {run:?}", round + 1);
                let elapsed = match run {
                    Run::Fetch => bench.baseline(&http, false).await,
                    Run::Baseline => bench.baseline(&http, true).await,
                    Run::Durable => {
                        let dir = tempfile::tempdir().expect("a temporary directory");
                        let store = SqliteStore::open(dir.path()).expect("the store");
                        let backend = Backend::sqlite(Arc::new(store));
                        bench.resync(&backend).await
                    }
                    Run::Memory => {
                        let inbox = MemoryInbox::new(items).max_bytes(8 << 30);
                        bench.resync(&Backend::memory(inbox)).await
                    }
                };
                rate[run as usize] = items as f64 / elapsed.as_secs_f64();
            }
            for (all, one) in rates.iter_mut().zip(rate) {
                all.push(one);
            }
            let [fetch, base, durable, memory] = rate;
            durable_ratios.push(durable / base);
            memory_ratios.push(memory / base);
            let order: Vec<&str> = order.iter().map(|r| r.name()).collect();
            println!(
                "| {} | {} | {fetch:.0} | {base:.0} | {durable:.0} | {:.0} % | {memory:.0} | {:.0} % |",
                round + 1,
                order.join(", "),
                100.0 * durable / base,
                100.0 * memory / base,
            );
        }
        let [fetch, base, durable, memory] = rates.map(median);
        println!(
            "| median | | {fetch:.0} | {base:.0} | {durable:.0} | **{:.0} %** | {memory:.0} | {:.0} % |",
            100.0 * median(durable_ratios),
            100.0 * median(memory_ratios),
        );
        println!();
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "{items} messages ({:.0} bytes of JSON each on average), pages of {page}, {cores} cores \
             (the emulator serving the pages runs in the same process). Load average after the \
             run: {}.",
            bytes as f64 / items as f64,
            load.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        );
    });
}
