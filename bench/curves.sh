#!/usr/bin/env bash
# How the embedded durable store's cost grows (cli/benches/curves.rs):
# ingest with a backlog of 0, 100 000 and 1 000 000 items already stored
# (requests/s, p99 ack, /metrics and `dlq list` times, disk bytes and RSS per
# item), with 1, 10, 100 and 1000 items per POST (items/s, ack latency), and
# with 10, 10 000 and 1 000 000 subscription records in the store (ack
# latency), against bare hyper in the same run. Prints Markdown tables; writes the
# points as CSV to target/curves and, when matplotlib is importable by
# python3 (or BENCH_PYTHON), charts to docs/images/curves-*.png.
# BENCH_BACKLOGS, BENCH_PER_POST, BENCH_RECORDS, BENCH_SECS, BENCH_WARMUP_SECS tune it.
# Talks to 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --bench curves --no-run 2>/dev/null
echo "Load average before the run: $(cut -d' ' -f1-3 /proc/loadavg)"
BENCH_CSV="$PWD/target/curves" cargo bench --bench curves 2>/dev/null
echo
echo "Load average after the run: $(cut -d' ' -f1-3 /proc/loadavg)"
python="${BENCH_PYTHON:-python3}"
if "$python" -c 'import matplotlib' 2>/dev/null; then
  "$python" bench/plot_curves.py target/curves docs/images
else
  echo "charts skipped: no matplotlib for $python (set BENCH_PYTHON)"
fi
