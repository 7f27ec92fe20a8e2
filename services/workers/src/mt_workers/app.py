"""Wiring of the async workers: clients of the services, the job producer, the consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from mt_core.rpc.server import grpc_server
from mt_core.rpc.services import services
from mt_jobs import JobClass, JobProducer, KindConfig, Worker
from mt_jobs.control import RedisConditions
from redis.asyncio import Redis

from mt_workers.handlers import Handlers
from mt_workers.settings import Settings
from mt_workers.stats import publish_forever

# Per kind: how many jobs one handler call takes (notifications batch into one RPC; the
# others are one unit of work each), and the latency above which AIMD backs off.
BATCH = {"notify": 50, "fanout": 4, "follow": 8, "import": 1, "join": 1}
TARGET_MS = {"notify": 500, "fanout": 2_000, "follow": 1_000, "import": 1_000, "join": 3_000}
# What users wait for within seconds, against what can wait hours for spare capacity (graph
# copies and celebrity joins: deferred while the foreground is saturated).
CLASS = {
    "notify": JobClass.RESERVED,
    "fanout": JobClass.RESERVED,
    "follow": JobClass.RESERVED,
    "import": JobClass.OPPORTUNISTIC,
    "join": JobClass.OPPORTUNISTIC,
}


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        b = await stack.enter_async_context(services(settings))
        producer = await stack.enter_async_context(
            JobProducer(settings.kafka_bootstrap, client_id="workers")
        )
        handlers = Handlers(settings, b, producer).table()
        kinds = [
            KindConfig(
                kind=kind,
                handler=handlers[kind],
                job_class=CLASS[kind],
                batch_size=BATCH[kind],
                max_concurrency=settings.max_concurrency,
                target_latency_ms=TARGET_MS[kind],
            )
            for kind in settings.kinds()
        ]
        await stack.enter_async_context(grpc_server(settings, []))
        redis = Redis.from_url(settings.redis_url, socket_timeout=1.0)
        stack.push_async_callback(redis.aclose)
        worker = await stack.enter_async_context(
            Worker(
                settings.kafka_bootstrap,
                kinds,
                producer=producer,
                conditions=RedisConditions(redis),
            )
        )
        publisher = asyncio.create_task(publish_forever(worker, redis), name="job-stats")
        try:
            yield
        finally:
            publisher.cancel()
