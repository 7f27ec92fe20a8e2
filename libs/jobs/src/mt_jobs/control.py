"""The async platform's shared state in Redis: what the workers yield to, and what they report.

- ``foreground`` (a hash): each gateway's admission state (:mod:`mt_core.foreground`); the
  worst pressure of them counts;
- ``jobs:paused`` (a set): kinds held at rate zero by ``minithreads jobs pause`` (until
  ``jobs resume``), e.g. to measure the foreground alone;
- ``jobs:stats`` (a hash): each worker process's statistics per kind, field
  ``<kind>:<host>:<pid>``, refreshed every second; a field not refreshed for a few seconds
  is a process that stopped. Their count per kind splits a kind's rate between processes.

Hashes rather than a key per process: every reader polls several times a second, and a SCAN
walks the whole keyspace (rate-limit windows, caches) to find a handful of keys.

When Redis cannot be read for a while, the foreground's state is unknown, and opportunistic
work waits: it can wait hours, the foreground cannot.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mt_core.foreground import read_all
from mt_core.telemetry import untraced
from redis.asyncio import Redis
from redis.exceptions import RedisError

PAUSED_KEY = "jobs:paused"
STATS_KEY = "jobs:stats"
STATS_STALE_MS = 5_000  # a process that has not reported for this long is gone
UNKNOWN_AFTER_S = 5.0


async def publish_stats(redis: Redis, who: str, stats: Mapping[str, dict[str, Any]]) -> None:
    """This process's statistics per kind (``who``: host:pid)."""
    at_ms = time.time_ns() // 1_000_000
    fields: dict[Any, Any] = {
        f"{kind}:{who}": json.dumps({**s, "at_ms": at_ms}) for kind, s in stats.items()
    }
    if not fields:
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(STATS_KEY, mapping=fields)
        pipe.pexpire(STATS_KEY, STATS_STALE_MS * 12)
        await pipe.execute()


async def read_stats(redis: Redis) -> dict[str, list[dict[str, Any]]]:
    """Per kind, the live processes' statistics (stale fields are dropped from the hash)."""
    now_ms = time.time_ns() // 1_000_000
    per_kind: dict[str, list[dict[str, Any]]] = {}
    stale: list[str] = []
    for raw_field, raw in (await redis.hgetall(STATS_KEY)).items():
        name = _text(raw_field)
        stats = json.loads(raw)
        if now_ms - int(stats.get("at_ms", 0)) > STATS_STALE_MS:
            stale.append(name)
            continue
        per_kind.setdefault(name.split(":", 1)[0], []).append(stats)
    if stale:
        await redis.hdel(STATS_KEY, *stale)
    return per_kind


@dataclass(frozen=True)
class Conditions:
    pressure: float = 0.0  # the foreground's, worst of the gateways (0: none reports)
    paused: frozenset[str] = frozenset()
    workers: dict[str, int] = field(default_factory=dict)  # live processes per kind


class RedisConditions:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._last = Conditions()
        self._last_ok = time.monotonic()

    async def read(self) -> Conditions:
        try:
            with untraced():  # polled four times a second: no trace wants these
                gateways = await read_all(self.redis)
                paused = {_text(k) for k in await self.redis.smembers(PAUSED_KEY)}
                stats = await read_stats(self.redis)
        except (RedisError, ValueError, KeyError):
            if time.monotonic() - self._last_ok > UNKNOWN_AFTER_S:
                return Conditions(1.0, self._last.paused, self._last.workers)
            return self._last
        workers = Counter({kind: len(processes) for kind, processes in stats.items()})
        self._last = Conditions(
            max((g.pressure for g in gateways), default=0.0), frozenset(paused), dict(workers)
        )
        self._last_ok = time.monotonic()
        return self._last


async def pause(redis: Redis, kinds: list[str]) -> None:
    await redis.sadd(PAUSED_KEY, *kinds)


async def resume(redis: Redis, kinds: list[str]) -> None:
    await redis.srem(PAUSED_KEY, *kinds)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
