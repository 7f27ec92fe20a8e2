"""Publish this process's job statistics: to Redis for ``minithreads jobs status``, and as
Prometheus gauges.

Each worker process writes its statistics per kind every second (:func:`mt_jobs.control.
publish_stats`): a stopped worker disappears from the status by itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket

from mt_core.telemetry import untraced
from mt_jobs import Worker
from mt_jobs.control import publish_stats
from prometheus_client import Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
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
        "units_per_s": "units of work per second (follows applied, for imports and joins)",
        "units": "units of work done since start",
        "rate_limit": "units per second this process may do (-1: unlimited)",
        "deferred": "1 while an opportunistic kind is held at rate zero",
        "overdue": "opportunistic jobs run past their deadline since start",
    }.items()
}


# Which capacity class each kind runs in (reserved, or opportunistic: deferrable), as a label.
CLASS = Gauge("jobs_class", "1 for each job kind's capacity class", ["kind", "class"])


def _gauges(worker: Worker) -> None:
    for kind, stats in worker.stats().items():
        CLASS.labels(kind, stats.job_class).set(1)
        values = dataclasses.asdict(stats)
        values["rate_limit"] = -1 if stats.rate_limit is None else stats.rate_limit
        for name, gauge in GAUGES.items():
            gauge.labels(kind).set(float(values[name]))


async def publish_forever(worker: Worker, redis: Redis, interval_s: float = 1.0) -> None:
    me = f"{socket.gethostname()}:{os.getpid()}"
    while True:
        _gauges(worker)
        stats = {kind: dataclasses.asdict(s) for kind, s in worker.stats().items()}
        try:
            with untraced():
                await publish_stats(redis, me, stats)
        except RedisError:
            log.warning("cannot publish job stats")
        await asyncio.sleep(interval_s)
