#!/usr/bin/env bash
# Ingest requests per second and ack latency of `msgraph-webhooks listen`
# with the in-memory, embedded durable and Redis inboxes, against a bare hyper
# server and a peer (an Express 5 receiver written like Microsoft's Node
# sample, bench/peers/express) measured in the same run
# (cli/benches/ingest.rs); prints Markdown tables.
# Two passes: the whole pipeline (listen's workers handle every item and
# print it, on the same cores), and ingest only (`--workers 0`: the items
# wait in the store for `msgraph-webhooks work`). The Redis rows need
# MSGRAPH_WEBHOOKS_REDIS_URL (or BENCH_REDIS_URL), the PostgreSQL rows
# MSGRAPH_WEBHOOKS_POSTGRES_URL (or BENCH_POSTGRES_URL). BENCH_SECS,
# BENCH_WARMUP_SECS, BENCH_CONNECTIONS tune it; BENCH_ONLY=memory,durable,...
# picks rows; BENCH_BASELINE_BIN=<another build's msgraph-webhooks> adds its
# memory and durable rows to the same run (an A/B of a change). Talks to
# 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench ingest --no-run 2>/dev/null
# The peer row: an Express receiver like Microsoft's Node sample, pinned by its lockfile.
if command -v npm >/dev/null 2>&1; then
  (cd bench/peers/express && npm ci --no-audit --no-fund --loglevel=error)
fi
echo
echo "### Whole pipeline (listen with its workers)"
cargo bench --bench ingest 2>/dev/null
echo
echo "### Ingest only (listen --workers 0)"
BENCH_LISTEN_ARGS="--workers 0" cargo bench --bench ingest 2>/dev/null
echo
echo "Load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
