#!/usr/bin/env bash
# Forwarding throughput of `msgraph-webhooks work --forward URL` from a
# durable store to an HTTP target, NATS JetStream, RabbitMQ and Redis
# Streams, against each target's own ceiling (the same client library
# publishing with the same confirmation awaited) and the pipeline's own rate
# (`work` printing), all measured in the same run (cli/benches/forward.rs);
# prints a Markdown table. The broker rows need MSGRAPH_WEBHOOKS_NATS_URL,
# MSGRAPH_WEBHOOKS_AMQP_URL and MSGRAPH_WEBHOOKS_REDIS_URL.
# BENCH_FORWARD_ITEMS (20000) and BENCH_ROUNDS (3) tune it. Talks to
# 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench forward --no-run 2>/dev/null
echo "Load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench --bench forward 2>/dev/null
echo
echo "Load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
