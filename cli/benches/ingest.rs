//! Ingest benchmark: requests per second and ack latency of `msgraph-webhooks
//! listen` for single-item basic notifications over keep-alive connections,
//! against a bare hyper server that answers 202 to any POST, measured in the
//! same run on the same machine.
//!
//! Run with `bench/ingest.sh` (writes BENCHMARKS.md), or directly:
//!
//! ```text
//! cargo bench --bench ingest
//! BENCH_SECS=20 BENCH_CONNECTIONS=32 cargo bench --bench ingest
//! ```
//!
//! Both servers run as separate processes; the load generator is this
//! process. Traffic goes to 127.0.0.1 only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{BIN, CLIENT_STATE, Server, Settings, load};

const ROLE: &str = "INGEST_BENCH_ROLE";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var(ROLE).as_deref() == Ok("bare") {
        runtime.block_on(common::bare_server());
        return;
    }
    // `cargo test --benches` runs bench targets with `--bench` absent: do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    runtime.block_on(run());
}

/// One server to measure.
struct Target {
    name: &'static str,
    command: tokio::process::Command,
    cleanup: Option<Box<dyn FnOnce()>>,
}

fn listen(extra: &[&str]) -> tokio::process::Command {
    listen_of(BIN, extra)
}

/// `listen` of the binary at `bin` (this build's, or a baseline's).
fn listen_of(bin: &str, extra: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(bin);
    command
        .args(["listen", "--addr", "127.0.0.1:0"])
        .args(extra)
        .args(
            std::env::var("BENCH_LISTEN_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
        .env("RUST_LOG", "warn,msgraph_webhooks::listener::server=info");
    command
}

fn targets(data_dir: &std::path::Path) -> Vec<Target> {
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| only.is_empty() || only.split(',').any(|o| o == name);
    let mut targets = Vec::new();
    let mut bare = tokio::process::Command::new(std::env::current_exe().unwrap());
    bare.env(ROLE, "bare");
    targets.push(Target {
        name: "bare hyper (baseline)",
        command: bare,
        cleanup: None,
    });
    // The peer: an Express receiver like Microsoft's Node sample (bench/peers).
    let express = concat!(env!("CARGO_MANIFEST_DIR"), "/../bench/peers/express");
    if wanted("express") {
        if std::path::Path::new(express)
            .join("node_modules/express")
            .is_dir()
        {
            let mut node = tokio::process::Command::new("node");
            node.arg(format!("{express}/server.mjs"))
                .env("MSGRAPH_WEBHOOKS_CLIENT_STATE", CLIENT_STATE)
                .env("NODE_ENV", "production");
            targets.push(Target {
                name: "Express 5, like Microsoft's Node sample (keeps nothing)",
                command: node,
                cleanup: None,
            });
        } else {
            eprintln!(
                "Express row skipped: run `npm ci` in bench/peers/express (bench/ingest.sh does)"
            );
        }
    }
    if wanted("memory") {
        targets.push(Target {
            name: "listen --memory",
            command: listen(&["--memory", "--inbox-capacity", "10000000,8GiB"]),
            cleanup: None,
        });
    }
    // The inspector is on by default; this row is the ack path without it.
    if wanted("memory") || wanted("no-inspector") {
        targets.push(Target {
            name: "listen --memory --inspector-capacity 0",
            command: listen(&[
                "--memory",
                "--inbox-capacity",
                "10000000,8GiB",
                "--inspector-capacity",
                "0",
            ]),
            cleanup: None,
        });
    }
    if wanted("durable") {
        targets.push(Target {
            name: "listen (embedded durable, fsync)",
            command: listen(&["--data-dir", data_dir.to_str().unwrap()]),
            cleanup: None,
        });
    }
    // A/B in one run: the same rows with another build of the binary
    // (`BENCH_BASELINE_BIN`, say the commit before a change).
    if let Ok(before) = std::env::var("BENCH_BASELINE_BIN") {
        let before_dir = data_dir.with_extension("before");
        let rows: [(&str, &str, Vec<&str>); 2] = [
            (
                "memory",
                "listen --memory, baseline build",
                vec!["--memory", "--inbox-capacity", "10000000,8GiB"],
            ),
            (
                "durable",
                "listen (embedded durable, fsync), baseline build",
                vec!["--data-dir", before_dir.to_str().unwrap()],
            ),
        ];
        for (only, name, args) in rows {
            if wanted(only) {
                targets.push(Target {
                    name,
                    command: listen_of(&before, &args),
                    cleanup: None,
                });
            }
        }
    }
    let redis = std::env::var("BENCH_REDIS_URL")
        .or_else(|_| std::env::var("MSGRAPH_WEBHOOKS_REDIS_URL"))
        .ok();
    match redis {
        Some(url) if wanted("redis") => {
            let prefix = format!("msgraph-webhooks-bench-{}", std::process::id());
            let cleanup_url = url.clone();
            let cleanup_prefix = prefix.clone();
            targets.push(Target {
                name: "listen --redis",
                command: listen(&["--redis", &url, "--redis-prefix", &prefix]),
                cleanup: Some(Box::new(move || {
                    // Remove what the run left behind in the shared Redis.
                    let _ = std::process::Command::new("sh")
                        .arg("-c")
                        .arg(format!(
                            "redis-cli -u {cleanup_url} --scan --pattern '{cleanup_prefix}:*' | xargs -r redis-cli -u {cleanup_url} del >/dev/null"
                        ))
                        .status();
                })),
            });
        }
        _ if wanted("redis") => {
            eprintln!("redis row skipped: set BENCH_REDIS_URL or MSGRAPH_WEBHOOKS_REDIS_URL")
        }
        _ => {}
    }
    let postgres = std::env::var("BENCH_POSTGRES_URL")
        .or_else(|_| std::env::var("MSGRAPH_WEBHOOKS_POSTGRES_URL"))
        .ok();
    match postgres {
        Some(url) if wanted("postgres") => {
            let schema = format!("msgraph_webhooks_bench_{}", std::process::id());
            let (cleanup_url, cleanup_schema) = (url.clone(), schema.clone());
            targets.push(Target {
                name: "listen --postgres",
                command: listen(&["--postgres", &url, "--postgres-schema", &schema]),
                cleanup: Some(Box::new(move || {
                    // Remove what the run left behind in the shared PostgreSQL.
                    let _ = std::process::Command::new("psql")
                        .args([
                            &cleanup_url,
                            "-qc",
                            &format!("DROP SCHEMA IF EXISTS {cleanup_schema} CASCADE"),
                        ])
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status();
                })),
            });
        }
        _ if wanted("postgres") => {
            eprintln!(
                "postgres row skipped: set BENCH_POSTGRES_URL or MSGRAPH_WEBHOOKS_POSTGRES_URL"
            )
        }
        _ => {}
    }
    targets
}

async fn run() {
    let settings = Settings::from_env();
    // Profiling aid: load a server that is already running.
    if let Ok(addr) = std::env::var("BENCH_ADDR") {
        let rate = std::env::var("BENCH_RATE")
            .ok()
            .and_then(|r| r.parse().ok());
        let measured = load(addr.parse().unwrap(), None, &settings, rate).await;
        println!(
            "{addr}: {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms, {} non-202",
            measured.rps(),
            measured.percentile_ms(0.5),
            measured.percentile_ms(0.99),
            measured.errors
        );
        return;
    }
    let data = std::env::temp_dir().join(format!("msgraph-webhooks-bench-{}", std::process::id()));
    let mut rows = Vec::new();
    for target in targets(&data) {
        let mut server = Server::start(target.command).await;
        let pid = server.child.id();
        let max = load(server.addr, pid, &settings, None).await;
        let rate = max.rps() / 2.0;
        let half = load(server.addr, pid, &settings, Some(rate)).await;
        let _ = server.child.kill().await;
        let _ = server.child.wait().await;
        if let Some(cleanup) = target.cleanup {
            cleanup();
        }
        eprintln!("measured {}", target.name);
        rows.push((target.name, max, rate, half));
    }
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(data.with_extension("before"));

    let base_rps = rows[0].1.rps();
    println!();
    println!(
        "{} connections, {} s measured after {} s warm-up per run, {} cores, load generator on the same machine",
        settings.connections,
        settings.duration.as_secs(),
        settings.warmup.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!(
        "| server | max requests/s | vs baseline | p50 / p99 ack at max (ms) | server CPU µs per request | other load (CPUs) | fixed rate (½ max) | p50 / p99 ack at that rate (ms) | non-202 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, max, rate, half) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} % | {:.2} / {:.2} | {:.1} | {:.2} | {:.0}/s | {:.2} / {:.2} | {} |",
            max.rps(),
            100.0 * max.rps() / base_rps,
            max.percentile_ms(0.50),
            max.percentile_ms(0.99),
            max.cpu_us_per_request(),
            max.other_cpu / max.elapsed.as_secs_f64(),
            rate,
            half.percentile_ms(0.50),
            half.percentile_ms(0.99),
            max.errors + half.errors
        );
    }
}
