"""The foreground's health as the edge sees it, shared through Redis with whoever yields to it.

Each gateway publishes its admission state every few hundred milliseconds (a field
``<host>:<pid>`` of the hash ``foreground``; a report older than ``STALE_MS`` is a gateway
gone); the async platform reads the worst of them and slows its opportunistic work as the
foreground nears saturation. ``pressure`` is 1.0 at the point where the gateway starts to
refuse requests, above 1 while it refuses, below while admitted requests' queueing delay
stays within its target.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

KEY = "foreground"
STALE_MS = 2_000


@dataclass(frozen=True)
class ForegroundHealth:
    pressure: float
    limit: int  # the admission limit in force
    in_flight: int
    refused_share: float  # of the requests of the last few seconds
    latency_ratio: float  # admitted requests' latency over their unloaded latency
    at_ms: int

    def encode(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def decode(raw: bytes | str) -> ForegroundHealth:
        doc = json.loads(raw)
        return ForegroundHealth(
            pressure=float(doc["pressure"]),
            limit=int(doc["limit"]),
            in_flight=int(doc["in_flight"]),
            refused_share=float(doc["refused_share"]),
            latency_ratio=float(doc["latency_ratio"]),
            at_ms=int(doc["at_ms"]),
        )


def source() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


async def publish(redis: Redis, health: ForegroundHealth) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        pipe.hset(KEY, source(), health.encode())
        pipe.pexpire(KEY, STALE_MS * 30)  # all gateways gone: the hash goes too
        await pipe.execute()


async def read_all(redis: Redis) -> list[ForegroundHealth]:
    """Every live gateway's last report."""
    now_ms = time.time_ns() // 1_000_000
    reports = [ForegroundHealth.decode(v) for v in (await redis.hgetall(KEY)).values()]
    return [r for r in reports if now_ms - r.at_ms <= STALE_MS]
