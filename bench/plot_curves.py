"""Charts of bench/curves.sh's CSV points: curves-backlog.png and
curves-per-post.png. Usage: plot_curves.py CSV_DIR OUT_DIR"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def rows(name):
    with open(source / name) as f:
        return list(csv.DictReader(f))


backlog = rows("backlog.csv")
fig, left = plt.subplots(figsize=(6, 3.5))
x = [max(int(r["backlog"]), 1) for r in backlog]
left.plot(x, [float(r["requests_per_sec"]) for r in backlog], "o-", label="ingest requests/s")
left.set_xscale("log")
left.set_xlabel("items already in the store (0 shown at 1)")
left.set_ylabel("requests/s")
left.set_ylim(bottom=0)
right = left.twinx()
right.plot(x, [float(r["p99_ms"]) for r in backlog], "s--", color="tab:red", label="p99 ack (ms)")
right.set_ylabel("p99 ack (ms)")
right.set_ylim(bottom=0)
left.set_title("Embedded durable store: ingest with a backlog")
fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.22))
fig.tight_layout()
fig.savefig(out / "curves-backlog.png", dpi=110)

per_post = rows("per_post.csv")
fig, left = plt.subplots(figsize=(6, 3.5))
x = [int(r["per_post"]) for r in per_post]
left.plot(x, [float(r["items_per_sec"]) for r in per_post], "o-", label="items/s")
left.set_xscale("log")
left.set_xlabel("items per POST")
left.set_ylabel("items/s")
left.set_ylim(bottom=0)
right = left.twinx()
right.plot(x, [float(r["p99_ms"]) for r in per_post], "s--", color="tab:red", label="p99 ack (ms)")
right.set_ylabel("p99 ack (ms)")
right.set_ylim(bottom=0)
left.set_title("Embedded durable store: items per POST")
fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.22))
fig.tight_layout()
fig.savefig(out / "curves-per-post.png", dpi=110)
print("charts:", out / "curves-backlog.png", out / "curves-per-post.png")
