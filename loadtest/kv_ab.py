"""The KV's put phase, this tree against another revision, alternating in one run.

    .venv/bin/python loadtest/kv_ab.py --base HEAD~1 [--rounds 4] [--duration-s 10]

This box's speed drifts by ±15% within minutes, so a change is only judged against its
predecessor measured in the same run, alternately: each round runs the put phase of
``minithreads kv bench`` (a fresh 3-replica cluster, ``--concurrency`` callers, random keys,
quorum puts) once on ``--base`` (checked out in a temporary git worktree; its replicas *and*
its client) and once on this working tree, and reports the medians, with the CPU time every
process spent per put (from /proc). Progress on stderr; Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(duration_s: float, concurrency: int) -> dict[str, Any]:
    """One put phase on a fresh cluster, with the code this process imports."""
    from mt_cli.kvbench import KVTarget, drive
    from mt_cli.kvcluster import KVCluster
    from mt_core.service import tune_gc
    from mt_kv_client import KVClient

    tune_gc(50_000)
    home = Path(tempfile.mkdtemp(prefix="kv-ab-"))
    cluster = KVCluster(home / "kv")
    try:
        await cluster.start()
        async with KVClient(cluster.manager_addr) as kv:
            target = KVTarget(kv)
            await drive(
                target.put_op, concurrency=concurrency, duration_s=2, warmup_s=0, value_bytes=100
            )
            pids = [p.pid for p in cluster.procs.values()] + [os.getpid()]
            before = sum(map(_cpu_s, pids))
            driver_before = _cpu_s(os.getpid())
            phase = await drive(
                target.put_op,
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=0,
                value_bytes=100,
            )
            cpu_s = sum(map(_cpu_s, pids)) - before
            driver_s = _cpu_s(os.getpid()) - driver_before
        puts = len(phase.latencies)
        return {
            "puts_s": phase.ops_s,
            "p99_ms": phase.p99_ms,
            "cpu_us_per_put": cpu_s / max(puts, 1) * 1e6,
            "driver_us_per_put": driver_s / max(puts, 1) * 1e6,
            "errors": phase.errors,
        }
    finally:
        for proc in cluster.procs.values():
            if proc.poll() is None:
                proc.kill()
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)


def _src_path(tree: Path) -> str:
    return os.pathsep.join(str(p) for p in sorted(tree.glob("*/*/src")))


def _run_one(tree: Path, duration_s: float, concurrency: int) -> dict[str, Any]:
    """The phase in a child process importing ``tree``'s packages (replicas inherit it)."""
    env = {**os.environ, "PYTHONPATH": _src_path(tree)}
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            "--duration-s",
            str(duration_s),
            "--concurrency",
            str(concurrency),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if child.returncode != 0:
        raise RuntimeError(f"the phase on {tree} failed:\n{child.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="the revision to compare with (HEAD)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(asyncio.run(_phase(args.duration_s, args.concurrency))))
        return 0

    worktree = Path(tempfile.mkdtemp(prefix="kv-ab-base-"))
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(worktree), args.base],
        check=True,
        capture_output=True,
    )
    trees = {f"base ({args.base})": worktree, "this tree": REPO}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    print(
        f"kv_ab: {args.rounds} rounds of {args.duration_s:g}s put phases, "
        f"{args.concurrency} callers; Ctrl-C stops",
        file=sys.stderr,
    )
    try:
        for round_ in range(1, args.rounds + 1):
            for name, tree in trees.items():
                started = time.monotonic()
                row = _run_one(tree, args.duration_s, args.concurrency)
                results[name].append(row)
                print(
                    f"kv_ab: round {round_}/{args.rounds} {name}: {row['puts_s']:,.0f} puts/s,"
                    f" p99 {row['p99_ms']:.1f} ms, {row['cpu_us_per_put']:.0f} µs CPU/put"
                    f" ({row['driver_us_per_put']:.0f} in the driver)"
                    f" ({time.monotonic() - started:.0f}s)",
                    file=sys.stderr,
                )
    except KeyboardInterrupt:
        print("kv_ab: interrupted", file=sys.stderr)
        return 130
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)],
            check=False,
            capture_output=True,
        )
    medians = {
        name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for name, rows in results.items()
    }
    base, this = medians.values()
    print(f"{'':<22} {'puts/s':>8} {'p99 ms':>7} {'µs CPU/put':>11}")
    for name, m in medians.items():
        print(f"{name:<22} {m['puts_s']:>8,.0f} {m['p99_ms']:>7.1f} {m['cpu_us_per_put']:>11.0f}")
    print(
        f"ratio (this tree / base): puts {this['puts_s'] / base['puts_s']:.2f}, "
        f"CPU per put {this['cpu_us_per_put'] / base['cpu_us_per_put']:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
