"""The KV growing from 3 to 6 replicas and draining back to 3 under steady open-loop load.

    .venv/bin/python loadtest/kv_elastic.py [--rate 500] [--baseline-s 30] [--steady-s 20]
        [--runs 3] [--together]

A fresh cluster (shard manager + 3 replicas, 16 shards) in a temporary folder; one process
sends Poisson arrivals at ``--rate`` ops/s — half exactly-once session puts of unique values,
half strong gets, over 512 keys — each timed from its *scheduled* send (a late generator is
not excused) and recorded for the linearizability checker. Phases: ``baseline``; ``grow``
(three replicas added one after another — each once the manager hears from the one before —
until every replica holds within one copy and one primary of the mean, nothing moving);
``steady``; ``shrink`` (the three drained and stopped one after another, until balanced
again). At the end
every key is read once more: each acknowledged write must be there.

Prints one verdict line per run (and the phases' p50/p99), with ``--runs`` the median ratios
too, and writes each run's numbers as JSON to ``loadtest/reports/kv-elastic-<time>.json``.
Progress on stderr; Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kvload
from mt_chaos.history import History
from mt_chaos.linearizability import Op, check
from mt_cli.kvcluster import KVCluster
from mt_kv_client import Consistency, Key, KVClient

REPO = Path(__file__).resolve().parent.parent
KEYS = [Key("bench", f"p{i}".encode(), b"v") for i in range(512)]


def _say(line: str) -> None:
    print(f"kv_elastic: {line}", file=sys.stderr, flush=True)


@dataclass
class Generator:
    """Open-loop arrivals; each op's latency from when it was due, and its phase."""

    kv: KVClient
    rate: float
    history: History = field(default_factory=History)
    phase: str = "baseline"
    latencies: dict[str, list[float]] = field(default_factory=dict)
    failed: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    lag_s: float = 0.0  # the most the generator itself ran behind its schedule
    # Every op: (phase, due, latency, shard, put?, how late the generator sent it).
    timeline: list[tuple[str, float, float, int, bool, float]] = field(default_factory=list)
    values: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(7)
        due = time.monotonic()
        while not stop.is_set():
            due += rng.expovariate(self.rate)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.lag_s = max(self.lag_s, -delay)
            task = asyncio.create_task(self._one(rng.choice(KEYS), rng.random() < 0.5, due))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(*self._tasks)

    async def _one(self, key: Key, write: bool, due: float) -> None:
        phase, name = self.phase, key.partition.decode()
        sent_late = time.monotonic() - due
        if write:
            value = str(next(self.values))

            async def put() -> str:
                await self.kv.put(key, value.encode())
                return value

            done = await self.history.record(name, "put", value, put)
        else:

            async def get() -> str | None:
                item = await self.kv.get(key, Consistency.STRONG)
                return item.value.decode() if item else None

            done = await self.history.record(name, "get", None, get)
        if done is None and self.history.ops[-1].ret == math.inf:
            self.failed[phase] += 1
            kind, err = self.history.raised[-1]
            if len(self.errors) < 5:
                self.errors.append(f"{kind} {name}: {err!r}")
            return
        latency = time.monotonic() - due
        self.latencies.setdefault(phase, []).append(latency)
        shard = self.kv.shard_of(key)
        self.timeline.append((phase, due, latency, shard, write, sent_late))


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


def _balanced(status: Any, expected: int) -> bool:
    """``expected`` live active replicas, each within one copy and one primary of the mean;
    nothing moving."""
    active = [r for r in status.replicas if r.alive and r.state == "active"]
    if not status.placement_settled or len(active) != expected:
        return False
    for counts in ([r.shards for r in active], [r.primaries for r in active]):
        mean = statistics.mean(counts)
        if any(abs(c - mean) > 1 for c in counts):
            return False
    return True


async def _until_balanced(cluster: KVCluster, expected: int, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if _balanced(await cluster.status(), expected):
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    return math.inf


async def _watch_epochs(
    cluster: KVCluster, events: list[tuple[float, int, int, str]], stop: asyncio.Event
) -> None:
    """Each shard's (epoch, primary) changes as the shard manager shows them, every 0.2 s."""
    seen: dict[int, tuple[int, str]] = {}
    while not stop.is_set():
        with contextlib.suppress(Exception):
            for shard in (await cluster.status()).shards:
                now = (shard.epoch, shard.primary)
                if seen.get(shard.id) != now:
                    seen[shard.id] = now
                    events.append((time.monotonic(), shard.id, *now))
        await asyncio.sleep(0.2)


def _slow_ops(
    gen: Generator, events: list[tuple[float, int, int, str]], threshold_s: float
) -> dict[str, Any]:
    """Where the change phases' slow ops (over ``threshold_s``) come from: sent late by the
    generator itself, on a shard whose epoch changed within 0.5 s before, or neither."""
    out: dict[str, Any] = {}
    for phase in ("grow", "shrink"):
        slow = [t for t in gen.timeline if t[0] == phase and t[2] > threshold_s]
        late = near = 0
        for _, due, latency, shard, _, sent_late in slow:
            if sent_late > threshold_s / 2:
                late += 1
            elif any(s == shard and due - 0.5 <= at <= due + latency for at, s, _, _ in events):
                near += 1
        ops = sum(1 for t in gen.timeline if t[0] == phase)
        start = min((t[1] for t in gen.timeline if t[0] == phase), default=0.0)
        per_s = Counter(int(t[1] - start) for t in slow)
        out[phase] = {
            "ops": ops,
            "slow": len(slow),
            "sent_late": late,
            "epoch_change": near,
            "other": len(slow) - late - near,
            "puts": sum(1 for t in slow if t[4]),
            "per_second": [per_s[i] for i in range(max(per_s, default=-1) + 1)],
        }
    return out


def _dump(
    path: Path, gen: Generator, events: list[tuple[float, int, int, str]], over_s: float
) -> None:
    """The ops slower than ``over_s`` and the epoch changes, in wall-clock time (to line up
    with the processes' logs)."""
    wall = time.time() - time.monotonic()
    slow = [(t[0], t[1] + wall, *t[2:]) for t in gen.timeline if t[2] > over_s]
    moved = [(at + wall, *rest) for at, *rest in events]
    path.write_text(json.dumps({"slow": slow, "epochs": moved}))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="kv-elastic-"))
    cluster = KVCluster(home / "kv", shards=16)
    result: dict[str, Any] = {"rate": args.rate}
    try:
        _say(f"starting a 3-replica cluster in {home} (Ctrl-C stops everything)")
        await cluster.start()
        async with KVClient(cluster.manager_addr) as kv:
            gen = Generator(kv, args.rate)
            stop = asyncio.Event()
            load = asyncio.create_task(gen.run(stop))
            events: list[tuple[float, int, int, str]] = []
            watch = asyncio.create_task(_watch_epochs(cluster, events, stop))
            _say(f"baseline: {args.rate:g} ops/s for {args.baseline_s:g} s")
            await asyncio.sleep(args.baseline_s)
            gen.phase = "grow"
            started = time.monotonic()
            added = await _add_three(cluster, together=args.together)
            _say(f"grow: added {', '.join(added)}; waiting for balance")
            result["grow_balanced_s"] = time.monotonic() - started
            result["grow_balanced_s"] += await _until_balanced(cluster, 6, args.limit_s)
            _say(f"grow: balanced after {result['grow_balanced_s']:.1f} s")
            gen.phase = "steady"
            await asyncio.sleep(args.steady_s)
            gen.phase = "shrink"
            started = time.monotonic()
            if args.together:
                await asyncio.gather(*(cluster.drain(name, args.limit_s) for name in added))
            else:
                for name in added:  # as `kv drain` does: one, then the next
                    await cluster.drain(name, args.limit_s)
            result["shrink_drained_s"] = time.monotonic() - started
            result["shrink_balanced_s"] = result["shrink_drained_s"] + await _until_balanced(
                cluster, 3, args.limit_s
            )
            _say(f"shrink: balanced after {result['shrink_balanced_s']:.1f} s")
            gen.phase = "after"
            await asyncio.sleep(5)
            stop.set()
            await asyncio.gather(load, watch)
            result.update(await _final_checks(kv, gen))
            base_p99_s = result["phases"].get("baseline", {}).get("p99_ms", 10.0) / 1000
            result["slow_ops"] = _slow_ops(gen, events, 3 * base_p99_s)
            _say(f"slow ops (> 3x the baseline p99): {result['slow_ops']}")
            if args.dump:
                _dump(Path(args.dump), gen, events, base_p99_s)
    finally:
        cluster.stop()
    return result


async def _add_three(cluster: KVCluster, *, together: bool) -> list[str]:
    """Three replicas, one after another as an operator adds them: each once the manager hears
    from the one before (``together``: all at once). A replica's start-up (~1 s of a core:
    imports, its store) runs on a machine of its own in a real cluster; on this box three at
    once take the CPU from the replicas serving for seconds."""
    if together:
        return [await cluster.add_replica() for _ in range(3)]
    added = []
    for _ in range(3):
        added.append(await cluster.add_replica())
        await cluster.wait_rejoined(added[-1])
    return added


async def _final_checks(kv: KVClient, gen: Generator) -> dict[str, Any]:
    called = gen.history.now()
    found = await kv.multi_get(KEYS)
    returned = gen.history.now()
    last_acked: dict[str, int] = {}
    for op in gen.history.acknowledged("put"):
        last_acked[op.key] = max(last_acked.get(op.key, 0), int(op.arg))
    missing = []
    for key in KEYS:  # (part of the history the checker sees, each read within the call)
        name, item = key.partition.decode(), found[key]
        value = item.value.decode() if item else None
        gen.history.ops.append(Op(name, "get", None, value, called, returned))
        if name in last_acked and (value is None or int(value) < last_acked[name]):
            missing.append(name)
    verdict = check(gen.history.ops)
    if not verdict.linearizable:
        dump = REPO / "loadtest" / "reports" / "kv-elastic-bad-history.jsonl"
        dump.write_text(gen.history.dump(verdict.bad_keys[:5]))
        _say(f"NOT linearizable: {verdict.bad_keys[:10]} (histories in {dump})")
    phases = {
        phase: {
            "ops": len(lat),
            "p50_ms": round(_pct(lat, 0.5), 1),
            "p99_ms": round(_pct(lat, 0.99), 1),
            "failed": gen.failed[phase],
        }
        for phase, lat in gen.latencies.items()
    }
    base = phases.get("baseline", {}).get("p99_ms") or 1.0
    return {
        "phases": phases,
        "failed": sum(gen.failed.values()),
        "errors": gen.errors,
        "acked_missing": len(missing),
        "linearizable": verdict.linearizable,
        "bad_keys": list(verdict.bad_keys[:20]),
        "ops_checked": verdict.operations,
        "p99_ratio_grow": round(phases.get("grow", {}).get("p99_ms", 0.0) / base, 2),
        "p99_ratio_shrink": round(phases.get("shrink", {}).get("p99_ms", 0.0) / base, 2),
        "generator_lag_ms": round(gen.lag_s * 1000, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=500.0, help="ops/s (%(default)s)")
    parser.add_argument("--baseline-s", type=float, default=30.0)
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--dump", help="write the slow ops and epoch changes (JSON) here")
    parser.add_argument("--limit-s", type=float, default=180.0, help="per change (%(default)s)")
    parser.add_argument("--together", action="store_true", help="add (drain) three at once")
    parser.add_argument("--runs", type=int, default=1, help="fresh clusters, one after another")
    args = parser.parse_args()
    results = []
    try:
        for run_no in range(1, args.runs + 1):
            _say(f"run {run_no}/{args.runs}")
            results.append(_report(asyncio.run(run(args))))
    except KeyboardInterrupt:
        _say("interrupted; everything it started is stopped")
        return 130
    if args.runs > 1:
        grow = statistics.median(r["p99_ratio_grow"] for r in results)
        shrink = statistics.median(r["p99_ratio_shrink"] for r in results)
        print(
            f"kv_elastic: median of {args.runs} runs: p99 grow/baseline {grow:.2f} "
            f"shrink/baseline {shrink:.2f}"
        )
    ok = all(r["failed"] == 0 and r["acked_missing"] == 0 and r["linearizable"] for r in results)
    return 0 if ok else 1


def _report(result: dict[str, Any]) -> dict[str, Any]:
    for phase, p in result.get("phases", {}).items():
        _say(
            f"{phase:<8} {p['ops']:>6} ops  p50 {p['p50_ms']:>7} ms  p99 {p['p99_ms']:>7} ms"
            f"  failed {p['failed']}"
        )
    out = kvload.write_report("kv-elastic", result)
    print(
        f"kv_elastic: grow balanced {result['grow_balanced_s']:.1f} s, shrink balanced "
        f"{result['shrink_balanced_s']:.1f} s, failed={result['failed']} "
        f"acked_missing={result['acked_missing']} linearizable="
        f"{'yes' if result['linearizable'] else 'NO'} p99 grow/baseline "
        f"{result['p99_ratio_grow']} shrink/baseline {result['p99_ratio_shrink']} "
        f"(generator lag max {result['generator_lag_ms']} ms; {out})",
        flush=True,
    )
    return result


if __name__ == "__main__":
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    sys.exit(main())
