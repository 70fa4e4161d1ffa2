#!/usr/bin/env bash
# Rich notifications per second through `msgraph-webhooks listen` (RSA-2048,
# all cores) against `openssl speed -multi <cores> rsa2048`, measured in the
# same run; prints a Markdown table. BENCH_ITEMS and BENCH_BATCH tune it
# (benches/rich.rs). Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench rich
