"""An open-loop KV load generator run as a process of its own (``kv_quota.py``, ``kv_hot.py``).

    python loadtest/kvload.py --addr HOST:PORT --keyspace K --rate R --seconds S
        [--gets 0.5] [--hot P1,P2,... --hot-share 0.4] [--bulk-ms 10]
        [--on-off-s 10 --t0 EPOCH_S --settle-s 1] [--samples]

Poisson arrivals at ``--rate`` for WARMUP_S + ``--seconds``: puts of 64 bytes, or (with
probability ``--gets``) strong gets, of keys spread over 4,096 partitions — or, with
probability ``--hot-share``, of one of the ``--hot`` partitions (equally). With ``--on-off-s``
it offers only in every other window of that length from the wall-clock ``--t0`` (the first
off) and counts each window's outcomes; ``--samples`` reports each successful op's due time
and latency (for windows another process switches). With ``--bulk-ms``
(puts only) the puts due in each tick go out together in one ``apply_many`` call when it ends:
a bulk writer, a fraction of the client CPU per put. Each op is timed
from when it was due (a late generator is not excused). Prints one JSON line with what the
measured window's ops did: rates, failures (anything but success; ``OverQuota`` counted
apart), p50/p99 (and the p99 of gets and of puts apart), how far the generator itself fell
behind, its own event loop's lag and how long it waited for a CPU — what of an op's latency
was the client's on a shared box.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import uvloop
from mt_core.service import tune_gc
from mt_kv_client import Consistency, Key, KVClient
from mt_kv_client.client import Put
from mt_kv_contract.errors import OverQuota

REPO = Path(__file__).resolve().parent.parent
WARMUP_S = 2.0  # its client's table and connections, not measured
PARTITIONS = 4096
VALUE = b"x" * 64


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank; 0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def pct_ms(values: list[float], q: float) -> float:
    """:func:`pct` of durations in seconds, in ms."""
    return pct(values, q) * 1000


def write_report(name: str, result: dict[str, Any]) -> str:
    """``result`` as ``loadtest/reports/<name>-<time>.json``; its path from the repository."""
    reports = REPO / "loadtest" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    out = reports / f"{name}-{time.strftime('%Y%m%d-%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(result, indent=2))
    return str(out.relative_to(REPO))


def spawn(addr: str, keyspace: str, rate: float, seconds: float, *more: str) -> Any:
    """A generator process (None for a rate of 0); ``result`` waits for its numbers."""
    if not rate:
        return None
    argv = [sys.executable, __file__, "--addr", addr, "--keyspace", keyspace]
    argv += ["--rate", f"{rate}", "--seconds", f"{seconds}", *more]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def result(proc: Any) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"a load generator failed (exit {proc.returncode})")
    return dict(json.loads(out.strip().splitlines()[-1]))


def _cpu_wait_s() -> float:
    """How long this process's main thread was runnable but without a CPU (schedstat)."""
    with open("/proc/thread-self/schedstat", "rb") as stats:
        return int(stats.read().split()[1]) / 1e9


@contextlib.asynccontextmanager
async def _watching(lags: list[float]) -> Any:
    """How late a 10 ms timer fires in this generator: its own loop's share of the latency."""

    async def watch() -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + 0.01
            await asyncio.sleep(0.01)
            lags.append(loop.time() - due)

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()


async def generate(args: argparse.Namespace) -> dict[str, Any]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {"get": [], "put": []}
    errors: list[str] = []
    lag = 0.0
    rng = random.Random(os.getpid())
    hot = [p.encode() for p in args.hot.split(",") if p]
    tasks: set[asyncio.Task[None]] = set()
    lags: list[float] = []
    by_window: defaultdict[int, Counter[str]] = defaultdict(Counter)
    samples: list[tuple[float, float]] = []  # (wall-clock due, ms) of each op that succeeded
    wall_offset = time.time() - time.monotonic()
    waited, used = _cpu_wait_s(), time.process_time()
    client = KVClient(
        args.addr, write_batches_in_flight=args.in_flight, read_batches_in_flight=args.in_flight
    )
    async with client as kv, _watching(lags):
        await kv.refresh()
        start = time.monotonic() + WARMUP_S
        end = start + args.seconds

        def window_of(due: float) -> tuple[int, float]:
            """The --on-off-s window an op due then falls in, and how far into it."""
            at = due + wall_offset - args.t0
            return int(at // args.on_off_s), at % args.on_off_s

        def offered(due: float) -> bool:
            """Whether an op due then is offered: always, or in the on-windows (--on-off-s)."""
            return not args.on_off_s or window_of(due)[0] % 2 == 1

        def record(due: float, answer: object, get: bool, now: float) -> None:
            if isinstance(answer, OverQuota):
                outcome = "over_quota"
            elif isinstance(answer, BaseException):  # any other failure is a failed request
                outcome = "failed"
                if len(errors) < 5:
                    errors.append(repr(answer))
            else:
                outcome = "ok"
                if due >= start and args.samples:
                    samples.append((round(due + wall_offset, 4), round((now - due) * 1000, 3)))
                if due >= start:
                    latencies.append(now - due)
                    by_kind["get" if get else "put"].append(latencies[-1])
            if due >= start:
                outcomes[outcome] += 1
            if args.on_off_s:  # by window, past the first --settle-s of each
                window, into = window_of(due)
                if window >= 0 and into >= args.settle_s:
                    by_window[window][outcome] += 1

        async def one(due: float, key: Key, get: bool) -> None:
            answer: object = None
            try:
                if get:
                    await kv.get(key, Consistency.STRONG)
                else:
                    await kv.put(key, VALUE)
            except Exception as err:
                answer = err
            record(due, answer, get, time.monotonic())

        async def bulk(ops: list[tuple[float, Key]]) -> None:
            answers: list[object]
            try:
                answers = list(
                    await kv.apply_many(
                        [[Put(key, VALUE)] for _, key in ops], return_exceptions=True
                    )
                )
            except Exception as err:
                answers = [err] * len(ops)
            now = time.monotonic()
            for (due, _), answer in zip(ops, answers, strict=True):
                record(due, answer, False, now)

        def launch(work: Any) -> None:
            task = asyncio.create_task(work)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        tick = args.bulk_ms / 1000
        pending: list[tuple[float, Key]] = []
        due = time.monotonic()
        send_at = due + tick
        while due < end:
            due += rng.expovariate(args.rate)
            if hot and rng.random() < args.hot_share:
                partition = rng.choice(hot)
            else:
                partition = f"p{rng.randrange(PARTITIONS)}".encode()
            key = Key(args.keyspace, partition, b"v")
            if not offered(due):
                continue
            if not tick:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                elif due >= start:
                    lag = max(lag, -delay)
                launch(one(due, key, rng.random() < args.gets))
                continue
            if due > send_at:  # a tick's puts go out together when it ends (--bulk-ms)
                if pending:
                    delay = send_at - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    elif send_at >= start:
                        lag = max(lag, -delay)
                    launch(bulk(pending))
                    pending = []
                send_at += tick * max(1, math.ceil((due - send_at) / tick))
            pending.append((due, key))
        if pending:
            launch(bulk(pending))
        await asyncio.gather(*tasks)
    seconds = args.seconds
    waited, used = _cpu_wait_s() - waited, time.process_time() - used
    return {
        "keyspace": args.keyspace,
        "offered_per_s": round(sum(outcomes.values()) / seconds, 1),
        "ok_per_s": round(outcomes["ok"] / seconds, 1),
        "over_quota_per_s": round(outcomes["over_quota"] / seconds, 1),
        "refused_by_client": client.holds.refused,
        "failed": outcomes["failed"],
        "errors": errors,
        "p50_ms": round(pct_ms(latencies, 0.5), 2),
        "p99_ms": round(pct_ms(latencies, 0.99), 2),
        "p99_get_ms": round(pct_ms(by_kind["get"], 0.99), 2),
        "p99_put_ms": round(pct_ms(by_kind["put"], 0.99), 2),
        "generator_lag_ms": round(lag * 1000, 1),
        "loop_lag_p99_ms": round(pct_ms(lags, 0.99), 2),
        "cpu_wait_ms_per_s": round(waited * 1000 / (seconds + WARMUP_S), 1),
        "cpu_ms_per_s": round(used * 1000 / (seconds + WARMUP_S), 1),
        **({"samples": samples} if args.samples else {}),
        **({"windows": {w: dict(c) for w, c in sorted(by_window.items())}} if by_window else {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", required=True)
    parser.add_argument("--keyspace", required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--gets", type=float, default=0.0)
    parser.add_argument(
        "--in-flight", type=int, default=1, help="batches out per replica at once (0: no cap)"
    )
    parser.add_argument(
        "--bulk-ms",
        type=float,
        default=0.0,
        help="puts only: those due in each tick of this length go out as one apply_many call",
    )
    parser.add_argument(
        "--on-off-s",
        type=float,
        default=0.0,
        help="offer only in every other window this long, counted from --t0 (the first off)",
    )
    parser.add_argument("--t0", type=float, default=0.0, help="wall-clock start of the windows")
    parser.add_argument(
        "--settle-s", type=float, default=0.0, help="not counted at the start of each window"
    )
    parser.add_argument(
        "--samples", action="store_true", help="report each successful op's (due, ms)"
    )
    parser.add_argument("--hot", default="", help="partitions, comma-separated")
    parser.add_argument("--hot-share", type=float, default=0.0)
    parser.add_argument(
        "--idle", action="store_true", help="run only on CPU nothing else wants (SCHED_IDLE)"
    )
    parser.add_argument(
        "--nice", type=int, default=0, help="the process's nice value (negative: root only)"
    )
    args = parser.parse_args()
    if args.bulk_ms and args.gets:
        parser.error("--bulk-ms writes: it takes no --gets")
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    if args.idle:  # a client standing for machines of its own: its CPU is not the cluster's
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    # A generator stands for clients on machines of their own: as little of this box's CPU,
    # and as few pauses of its own in what it times, as it can (the services' loop and GC).
    tune_gc(50_000)
    print(json.dumps(uvloop.run(generate(args))), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")
    sys.exit(main())
