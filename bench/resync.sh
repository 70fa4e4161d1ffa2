#!/usr/bin/env bash
# Items per second of a delta-query resync (issue 15) into listen's default
# embedded durable store (and the in-memory inbox, for reference), against
# a plain reqwest client that only fetches and parses the same delta round,
# measured in the same run against the in-process emulator; prints a
# Markdown table. BENCH_ITEMS, BENCH_ROUNDS and BENCH_PAGE tune it
# (cli/benches/resync.rs). Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p msgraph-webhooks-cli --bench resync 2>/dev/null
