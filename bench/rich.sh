#!/usr/bin/env bash
# Rich notifications per second through `msgraph-webhooks listen` (RSA-2048,
# all cores) against `openssl speed -multi <cores> rsa2048`, measured in the
# same run; prints Markdown tables. Runs with the in-memory inbox and with
# listen's default embedded durable store (BENCH_STORE=memory|sqlite picks
# one); BENCH_ITEMS, BENCH_ROUNDS and BENCH_BATCH tune it (cli/benches/rich.rs).
# Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
for store in ${BENCH_STORE:-memory sqlite}; do
  echo
  echo "### Store: $store"
  echo
  BENCH_STORE="$store" cargo bench --bench rich 2>/dev/null
done
