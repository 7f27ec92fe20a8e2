"""``minithreads jobs status [--json]`` and ``jobs pause|resume KIND...``: the async platform.

Worker processes publish their statistics to Redis every second (:mod:`mt_jobs.control`);
``status`` sums the live ones per kind: the kind's class (reserved or
opportunistic), the rate it may go at now and whether it is deferred (opportunistic work held
at zero while the foreground is saturated), Kafka lag, rates, retries, dead letters and the
AIMD concurrency limit. ``pause`` holds kinds at rate zero until ``resume`` (their work waits
in Kafka): to measure the foreground alone, or to let an incident pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from mt_jobs.control import pause, read_stats, resume
from redis.asyncio import Redis
from redis.exceptions import RedisError

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
    "units",
    "units_per_s",
    "overdue",
)


def add_arguments(jobs: argparse.ArgumentParser) -> None:
    jobs.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    status = sub.add_parser(
        "status", help="per kind: class, rate limit, deferred, lag, rate, retries, dead letters"
    )
    status.add_argument("--json", action="store_true")
    for verb, what in (("pause", "hold KINDs at rate zero"), ("resume", "let KINDs run again")):
        cmd = sub.add_parser(verb, help=what)
        cmd.add_argument("kinds", nargs="+", metavar="KIND")


def _merge(total: dict[str, Any], stats: dict[str, Any]) -> None:
    total["workers"] += 1
    for name in SUMMED:
        total[name] += stats.get(name, 0)
    total["job_class"] = stats.get("job_class", total["job_class"])
    total["deferred"] = total["deferred"] or bool(stats.get("deferred"))
    total["paused"] = total["paused"] or bool(stats.get("paused"))
    limit = stats.get("rate_limit")
    if limit is None or total["rate_limit"] is None:
        total["rate_limit"] = None  # any process unlimited: the kind is
    else:
        total["rate_limit"] = round(total["rate_limit"] + limit, 2)


async def collect(redis_url: str) -> dict[str, dict[str, Any]]:
    redis = Redis.from_url(redis_url, socket_timeout=2.0)
    try:
        per_kind = await read_stats(redis)
    finally:
        await redis.aclose()
    kinds: dict[str, dict[str, Any]] = {}
    for kind, processes in sorted(per_kind.items()):
        total = kinds[kind] = {name: 0 for name in SUMMED} | {
            "workers": 0,
            "job_class": "reserved",
            "rate_limit": 0.0,
            "deferred": False,
            "paused": False,
        }
        for stats in processes:
            _merge(total, stats)
    return kinds


async def _switch(redis_url: str, verb: str, kinds: list[str]) -> None:
    redis = Redis.from_url(redis_url, socket_timeout=2.0)
    try:
        await (pause if verb == "pause" else resume)(redis, kinds)
    finally:
        await redis.aclose()


def _limit(t: dict[str, Any]) -> str:
    if t["paused"]:
        return "paused"
    if t["deferred"]:
        return "deferred"
    return "-" if t["rate_limit"] is None else f"{t['rate_limit']:.0f}/s"


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (RedisError, OSError) as err:
        print(f"cannot reach Redis at {args.redis} ({err}): is the stack up? `minithreads up`")
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.jobs_command in ("pause", "resume"):
        asyncio.run(_switch(args.redis, args.jobs_command, args.kinds))
        print(f"{args.jobs_command}d: {', '.join(args.kinds)}")
        return 0
    kinds = asyncio.run(collect(args.redis))
    if args.json:
        print(json.dumps({"kinds": kinds}))
        return 0
    if not kinds:
        print("no workers are reporting (are they running? `minithreads up workers`)")
        return 1
    print(
        f"{'kind':<8}{'class':>15}{'rate limit':>12}{'workers':>8}{'lag':>8}{'rate/s':>8}"
        f"{'units/s':>9}{'done':>8}{'retried':>8}{'dead':>6}{'limit':>6}{'in flight':>10}"
    )
    for kind, t in kinds.items():
        print(
            f"{kind:<8}{t['job_class']:>15}{_limit(t):>12}{t['workers']:>8}{t['lag']:>8}"
            f"{t['rate_per_s']:>8.1f}{t['units_per_s']:>9.1f}{t['processed']:>8}"
            f"{t['retried']:>8}{t['dead']:>6}{t['limit']:>6}{t['in_flight']:>10}"
        )
    return 0
