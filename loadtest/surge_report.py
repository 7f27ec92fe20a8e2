"""A surge's numbers and charts, from Locust's CSV files, the ledger and the backlog samples."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

REFUSED = " [refused]"  # the locustfile's suffix for requests refused with Retry-After
# Summary rate -> the Locust request name it counts (successes only).
RATE_NAMES = {
    "posts": ("POST /v1/posts", "POST /v1/posts (reply)"),
    "likes": ("PUT /v1/posts/[id]/like",),
    "feed_reads": ("GET /v1/feed",),
    "follows": ("PUT /v1/me/following/[h]",),
}


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0  # Locust writes "N/A" where it has no sample


def summarize(folder: Path, backlog: list[dict[str, Any]], load_s: float) -> dict[str, Any]:
    """Rates, p99s, error and shed rates of the run in ``folder`` (Locust's ``locust_*.csv``)."""
    rows = [r for r in _rows(folder / "locust_stats.csv") if r["Name"] != "Aggregated"]
    refused = [r for r in rows if r["Name"].endswith(REFUSED)]
    stats = [r for r in rows if not r["Name"].endswith(REFUSED)]
    total = sum(int(r["Request Count"]) for r in rows)
    failed = sum(int(r["Failure Count"]) for r in rows)
    ok = {r["Name"]: int(r["Request Count"]) - int(r["Failure Count"]) for r in stats}
    counts = json.loads((folder / "counts.json").read_text())
    signups = sum(
        1 for line in (folder / "ledger.jsonl").read_text().splitlines() if '"kind": "user"' in line
    )
    rates = {"signups": round(signups / load_s, 2)}
    for key, names in RATE_NAMES.items():
        rates[key] = round(sum(ok.get(n, 0) for n in names) / load_s, 2)
    return {
        "duration_s": round(load_s, 1),
        "rates_per_s": rates,
        # Of the admitted requests (refusals are counted under their own names).
        "p99_ms": {r["Name"]: _float(r["99%"]) for r in stats},
        "refused_p99_ms": {r["Name"][: -len(REFUSED)]: _float(r["99%"]) for r in refused},
        "requests": total,
        "error_rate": round(failed / total, 4) if total else 0.0,
        "shed_rate": round(counts["shed"] / total, 4) if total else 0.0,
        "rate_limited": counts["rate_limited"],
        "peak_backlog_jobs": max((s["backlog"] for s in backlog), default=0),
    }


def charts(folder: Path, backlog: list[dict[str, Any]], load_end_s: float) -> list[str]:
    """rates.png, latencies.png and backlog.png in ``folder``; returns their names."""
    history = _rows(folder / "locust_stats_history.csv")
    if not history:
        return []
    t0 = min(int(r["Timestamp"]) for r in history)
    by_name: dict[str, list[tuple[float, dict[str, str]]]] = defaultdict(list)
    for r in history:
        by_name[r["Name"]].append((int(r["Timestamp"]) - t0, r))
    made: list[str] = []

    fig, ax = plt.subplots(figsize=(11, 5))
    for name, points in sorted(by_name.items()):
        if name != "Aggregated":
            ax.plot(
                [t for t, _ in points], [_float(r["Requests/s"]) for _, r in points], label=name
            )
    users = by_name.get("Aggregated", [])
    twin = ax.twinx()
    twin.plot(
        [t for t, _ in users], [_float(r["User Count"]) for _, r in users], "k--", label="users"
    )
    twin.set_ylabel("simulated users")
    ax.set(xlabel="surge s", ylabel="requests/s", title="Request rates (and users alive, dashed)")
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, folder / "rates.png", made)

    fig, ax = plt.subplots(figsize=(11, 5))
    for pct in ("50%", "95%", "99%"):
        ax.plot([t for t, _ in users], [_float(r[pct]) for _, r in users], label=f"p{pct[:-1]}")
    ax.set(xlabel="surge s", ylabel="ms", title="Latency, all requests (rolling window)")
    ax.set_yscale("log")
    ax.legend()
    _save(fig, folder / "latencies.png", made)

    if backlog:
        fig, ax = plt.subplots(figsize=(11, 5))
        kinds = sorted({k for s in backlog for k in s["kinds"]})
        for kind in kinds:
            ax.plot(
                [s["t"] for s in backlog], [s["kinds"].get(kind, 0) for s in backlog], label=kind
            )
        ax.plot([s["t"] for s in backlog], [s["backlog"] for s in backlog], "k", label="all")
        ax.axvline(load_end_s, color="grey", linestyle=":", label="load stops")
        ax.set(xlabel="surge s", ylabel="jobs waiting or running", title="Async backlog")
        ax.legend(fontsize=8)
        _save(fig, folder / "backlog.png", made)
    return made


def _save(fig: Any, path: Path, made: list[str]) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    made.append(path.name)
