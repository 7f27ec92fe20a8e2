"""``minithreads jobs status [--json]``: the async platform per job kind.

Worker processes publish their statistics to Redis every second (``jobs:stats:<kind>:<who>``,
expiring by themselves); this sums them per kind: Kafka lag, rate, retries, dead letters and
the AIMD concurrency limit in force.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from redis.asyncio import Redis

PREFIX = "jobs:stats:"
SUMMED = (
    "processed",
    "failed",
    "retried",
    "dead",
    "in_flight",
    "queued",
    "limit",
    "rate_per_s",
    "lag",
)


def add_arguments(jobs: argparse.ArgumentParser) -> None:
    jobs.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    status = sub.add_parser("status", help="per kind: lag, rate, retries, dead letters, limit")
    status.add_argument("--json", action="store_true")


async def collect(redis_url: str) -> dict[str, dict[str, Any]]:
    redis = Redis.from_url(redis_url, socket_timeout=2.0)
    try:
        keys = [k async for k in redis.scan_iter(match=f"{PREFIX}*", count=500)]
        values = await redis.mget(keys) if keys else []
    finally:
        await redis.aclose()
    kinds: dict[str, dict[str, Any]] = {}
    for key, raw in zip(keys, values, strict=True):
        if raw is None:
            continue
        kind = (key.decode() if isinstance(key, bytes) else key)[len(PREFIX) :].split(":", 1)[0]
        stats = json.loads(raw)
        total = kinds.setdefault(kind, {name: 0 for name in SUMMED} | {"workers": 0})
        total["workers"] += 1
        for name in SUMMED:
            total[name] += stats.get(name, 0)
    return dict(sorted(kinds.items()))


def run(args: argparse.Namespace) -> int:
    kinds = asyncio.run(collect(args.redis))
    if args.json:
        print(json.dumps({"kinds": kinds}))
        return 0
    if not kinds:
        print("no workers are reporting (are they running? `minithreads up workers`)")
        return 1
    print(
        f"{'kind':<10}{'workers':>8}{'lag':>8}{'rate/s':>9}{'done':>9}{'retried':>9}"
        f"{'dead':>7}{'limit':>7}{'in flight':>11}"
    )
    for kind, t in kinds.items():
        print(
            f"{kind:<10}{t['workers']:>8}{t['lag']:>8}{t['rate_per_s']:>9.1f}{t['processed']:>9}"
            f"{t['retried']:>9}{t['dead']:>7}{t['limit']:>7}{t['in_flight']:>11}"
        )
    return 0
