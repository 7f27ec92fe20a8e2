"""Publish this process's job statistics: to Redis for ``minithreads jobs status``, and as
Prometheus gauges.

Each worker process writes ``jobs:stats:<kind>:<host>:<pid>`` (JSON, expiring after a few
seconds) every second: a stopped worker disappears from the status by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket

from mt_jobs import Worker
from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
PREFIX = "jobs:stats:"
TTL_MS = 5_000
# The same numbers for Prometheus (this process's share; sum over processes by kind).
GAUGES = {
    name: Gauge(f"jobs_{name}", help_, ["kind"])
    for name, help_ in {
        "lag": "Kafka consumer lag (records) of this process's partitions",
        "limit": "current AIMD concurrency limit",
        "in_flight": "batches being handled",
        "processed": "jobs handled since start",
        "retried": "jobs sent to the retry topic since start",
        "dead": "jobs dead-lettered since start",
        "rate_per_s": "jobs handled per second, last 10 s",
    }.items()
}


async def publish_forever(worker: Worker, redis: Redis, interval_s: float = 1.0) -> None:
    me = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for kind, stats in worker.stats().items():
                    pipe.set(
                        f"{PREFIX}{kind}:{me}", json.dumps(dataclasses.asdict(stats)), px=TTL_MS
                    )
                await pipe.execute()
        except RedisError:
            log.warning("cannot publish job stats")
        await asyncio.sleep(interval_s)
