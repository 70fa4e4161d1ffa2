"""Charts of bench/curves.sh's CSV points: curves-backlog.png,
curves-per-post.png and curves-records.png. Usage: plot_curves.py CSV_DIR OUT_DIR"""

import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

source, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def chart(csv_name, png_name, x_column, x_label, rate_column, rate_label, title):
    """A rate (left axis) and the p99 ack (right axis) against a log x axis
    (0 shown at 1)."""
    path = source / csv_name
    if not path.exists():
        return None
    with open(path) as f:
        points = list(csv.DictReader(f))
    fig, left = plt.subplots(figsize=(6, 3.5))
    x = [max(int(r[x_column]), 1) for r in points]
    left.plot(x, [float(r[rate_column]) for r in points], "o-", label=rate_label)
    left.set_xscale("log")
    left.set_xlabel(x_label)
    left.set_ylabel(rate_label)
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(x, [float(r["p99_ms"]) for r in points], "s--", color="tab:red", label="p99 ack (ms)")
    right.set_ylabel("p99 ack (ms)")
    right.set_ylim(bottom=0)
    left.set_title(title)
    fig.legend(loc="lower center", bbox_to_anchor=(0.5, 0.22))
    fig.tight_layout()
    fig.savefig(out / png_name, dpi=110)
    return out / png_name


made = [
    chart("backlog.csv", "curves-backlog.png", "backlog", "items already in the store (0 shown at 1)",
          "requests_per_sec", "ingest requests/s", "Embedded durable store: ingest with a backlog"),
    chart("per_post.csv", "curves-per-post.png", "per_post", "items per POST",
          "items_per_sec", "items/s", "Embedded durable store: items per POST"),
    chart("records.csv", "curves-records.png", "records", "subscription records in the store",
          "requests_per_sec", "ingest requests/s", "Ingest with subscription records (--subscription-records)"),
]
print("charts:", *[str(m) for m in made if m])
