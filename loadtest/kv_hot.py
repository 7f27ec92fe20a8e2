"""Hot μshards under open-loop load: moved off their primary until the load is even, or — one
too hot to place better — reported and left alone.

    .venv/bin/python loadtest/kv_hot.py [--scenario hot|hot1|split] [--rate 1000] [--seconds 300]

A fresh cluster (shard manager + 3 replicas, 16 shards) in a temporary folder; a generator
process (``kvload.py``) sends Poisson arrivals at ``--rate``, half puts, half strong gets.
``hot``: four partitions, each in its own μshard, all four μshards on shard 0, carry 10% of
the load each; the rest is spread over 4,096 partitions. ``hot1``: one partition carries 50%.
``split``: the load spread evenly; 10 s in, shard 0 is split (``SplitShard``: a new shard
takes half its 64 μshards, moved live one at a time).
``kv status`` is polled every 0.5 s for each replica's load (keys per second it serves as a
primary), the μshard moves and the notes.

Verdicts — hot: the busiest primary's load within 1.2x the mean within 20 s of the load's
start, no μshard moved twice, no failed request; hot1: the μshard reported in a note, no move,
no failed request; split: the split done, no failed request. Prints one verdict line and
writes the numbers to ``loadtest/reports/kv-hot-<scenario>-<time>.json``. Progress on stderr;
Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import kvload
from mt_cli.kvcluster import KVCluster, manager_call
from mt_kv_contract.keys import microshard
from mt_proto import kv_pb2 as pb

KEYSPACE = "bench"
SHARDS, MICROSHARDS = 16, 1024
RATIO = 1.2
BALANCED_WITHIN_S = 20.0


def _say(line: str) -> None:
    print(f"kv_hot: {line}", file=sys.stderr, flush=True)


def hot_partitions(count: int) -> list[str]:
    """``count`` partitions in distinct μshards that the initial table puts on shard 0."""
    found: dict[int, str] = {}
    for i in range(1_000_000):
        name = f"hot{i}"
        u = microshard(KEYSPACE, name.encode(), MICROSHARDS)
        if u % SHARDS == 0 and u not in found:
            found[u] = name
            if len(found) == count:
                return list(found.values())
    raise RuntimeError("no partitions found")


def _ratio(status: Any) -> tuple[float, dict[str, float]]:
    loads = {r.id: r.ops_per_s for r in status.replicas if r.alive}
    mean = sum(loads.values()) / max(len(loads), 1)
    return (max(loads.values()) / mean if mean else 0.0), loads


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="kv-hot-"))
    cluster = KVCluster(home / "kv", shards=SHARDS)  # (1,024 μshards: 64 per shard)
    hot, share = {
        "hot": (hot_partitions(4), 0.4),
        "hot1": (hot_partitions(1), 0.5),
        "split": ([], 0.0),
    }[args.scenario]
    result: dict[str, Any] = {"scenario": args.scenario, "rate": args.rate, "hot": hot}
    samples: list[dict[str, Any]] = []
    moves: dict[tuple[int, int, int], str] = {}
    try:
        _say(f"starting a 3-replica cluster in {home} (Ctrl-C stops everything)")
        await cluster.start()
        gen = kvload.spawn(
            cluster.manager_addr,
            KEYSPACE,
            args.rate,
            args.seconds,
            "--gets",
            "0.5",
            "--hot",
            ",".join(hot),
            "--hot-share",
            f"{share}",
        )
        started = time.monotonic()
        _say(f"{args.scenario}: {args.rate:g} ops/s, {share:.0%} on {hot}, {args.seconds:g} s")
        last_say = 0.0
        split: Any = None
        while gen.poll() is None:
            if args.scenario == "split" and split is None and time.monotonic() - started > 10:
                request = pb.SplitRequest(shard=0)
                split = await manager_call(cluster.manager_addr, "SplitShard", request)
                split_at = time.monotonic()
                _say(f"split: shard 0 -> {split.new_shard}, {len(split.remaining)} μshards")
            await asyncio.sleep(0.5)
            status = await cluster.status()
            ratio, loads = _ratio(status)
            t = time.monotonic() - started
            samples.append({"t": round(t, 1), "ratio": round(ratio, 3), "loads": loads})
            for m in status.moves:
                moves[m.microshard, m.from_shard, m.to_shard] = m.step
            result["notes"] = list(status.notes)
            if split is not None and "split_s" not in result and not status.splits:
                result["split_s"] = round(time.monotonic() - split_at, 1)
                result["split_microshards"] = len(split.remaining)
                _say(f"split: done in {result['split_s']} s")
            if t - last_say >= 10:
                last_say = t
                _say(f"t={t:5.1f}s max/mean {ratio:.2f} moves {len(moves)} notes {status.notes}")
        result["load"] = kvload.result(gen)
    finally:
        cluster.stop()
    return _verdicts(result, samples, moves)


def _verdicts(
    result: dict[str, Any],
    samples: list[dict[str, Any]],
    moves: dict[tuple[int, int, int], str],
) -> dict[str, Any]:
    # From the first load reported (the generator sends during its warm-up too).
    start = next((s["t"] for s in samples if sum(s["loads"].values()) > 0), 0.0)
    measured = [s for s in samples if s["t"] > start]
    balanced_at = next((s["t"] - start for s in measured if s["ratio"] <= RATIO), None)
    after = [s for s in measured if balanced_at is not None and s["t"] - start >= balanced_at]
    per_microshard = Counter(u for u, _, _ in moves)
    result.update(
        balanced_after_s=round(balanced_at, 1) if balanced_at is not None else None,
        over_ratio_after_balanced=round(
            sum(s["ratio"] > RATIO for s in after) / max(len(after), 1), 3
        ),
        ratio_last=measured[-1]["ratio"] if measured else None,
        moves=[{"microshard": u, "from": f, "to": t, "step": s} for (u, f, t), s in moves.items()],
        moved_twice=[u for u, n in per_microshard.items() if n > 1],
        failed=result["load"]["failed"],
        samples=samples,
    )
    if result["scenario"] == "hot":
        ok = balanced_at is not None and balanced_at <= BALANCED_WITHIN_S
        ok = ok and not result["moved_twice"]
    elif result["scenario"] == "split":
        ok = "split_s" in result
    else:
        ok = not moves and bool(result.get("notes"))
    result["ok"] = ok and result["failed"] == 0
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=["hot", "hot1", "split"], default="hot")
    parser.add_argument("--rate", type=float, default=1000.0, help="ops/s (%(default)s)")
    parser.add_argument("--seconds", type=float, default=300.0, help="(%(default)s)")
    args = parser.parse_args()
    try:
        result = asyncio.run(run(args))
    except KeyboardInterrupt:
        _say("interrupted; everything it started is stopped")
        return 130
    out = kvload.write_report(f"kv-hot-{args.scenario}", result)
    print(
        f"kv_hot {args.scenario}: balanced (max/mean <= {RATIO}) after "
        f"{result['balanced_after_s']} s, then over {result['over_ratio_after_balanced']:.0%}"
        f" of the time, last ratio {result['ratio_last']}; {len(result['moves'])} moves, moved"
        f" twice {result['moved_twice']}; notes {result.get('notes')}; failed {result['failed']}"
        f", p99 {result['load']['p99_ms']} ms -> {'ok' if result['ok'] else 'NOT MET'}"
        f" ({out})"
    )
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    sys.exit(main())
