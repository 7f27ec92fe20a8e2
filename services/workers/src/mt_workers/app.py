"""Wiring of the async workers: the KV client, the owners' domain objects the handlers run,
the job producer, the consumers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from mt_core.rpc.server import grpc_server
from mt_feed.domain import Feed
from mt_feed.settings import Settings as FeedSettings
from mt_graph.domain import Graph
from mt_graph.imports import Legacy
from mt_graph.settings import Settings as GraphSettings
from mt_jobs import JobClass, JobProducer, KindConfig, Outbox, Worker
from mt_jobs.control import RedisConditions
from mt_kv_client import KVClient
from mt_legacy import LegacyGraph
from mt_posts.domain import Posts
from mt_posts.settings import Settings as PostsSettings
from redis.asyncio import Redis

from mt_workers.handlers import Handlers
from mt_workers.settings import Settings
from mt_workers.stats import publish_forever

# Per kind: how many jobs one handler call takes (notifications and follows are batched into
# few KV writes; the others are one unit of work each), and the latency above which AIMD
# backs off.
BATCH = {"notify": 50, "fanout": 4, "follow": 50, "import": 1, "join": 1}
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
async def _owners(
    settings: Settings, kv: KVClient, producer: JobProducer
) -> AsyncIterator[Handlers]:
    """The handlers over the owners' domain objects; the outboxes their writes stage jobs in
    (the same owners as the services': each service's relay and ours take the same rows)."""
    graph_settings = GraphSettings()
    async with (
        Outbox(kv, producer, owner="graph", stale_after_ms=settings.outbox_stale_ms) as graph_out,
        Outbox(kv, producer, owner="posts", stale_after_ms=settings.outbox_stale_ms) as posts_out,
    ):
        graph = Graph(kv, graph_out)
        legacy_graph = LegacyGraph(graph_settings.legacy_seed, graph_settings.legacy_size)
        yield Handlers(
            settings,
            kv,
            producer,
            graph,
            Legacy(graph_settings, kv, graph, legacy_graph, graph_out),
            Feed(FeedSettings(), kv),
            Posts(PostsSettings(), kv, posts_out),
        )


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    async with AsyncExitStack() as stack:
        kv = await stack.enter_async_context(KVClient(settings.kv_addr))
        producer = await stack.enter_async_context(
            JobProducer(settings.kafka_bootstrap, client_id="workers")
        )
        handlers = (await stack.enter_async_context(_owners(settings, kv, producer))).table()
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
