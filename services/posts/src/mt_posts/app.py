"""Wiring of the posts service: what it serves and what it holds open, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mt_core.rpc.server import Servicer, grpc_server
from mt_jobs import JobProducer, Outbox
from mt_kv_client import KVClient
from mt_proto import posts_pb2, posts_pb2_grpc

from mt_posts.domain import Posts
from mt_posts.grpc_api import PostsServicer
from mt_posts.settings import Settings

SERVICE = posts_pb2.DESCRIPTOR.services_by_name["PostsService"].full_name


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    async with (
        KVClient(settings.kv_addr) as kv,
        JobProducer(settings.kafka_bootstrap, client_id="posts") as producer,
        Outbox(kv, producer, owner="posts", stale_after_ms=settings.outbox_stale_ms) as outbox,
    ):
        posts = Posts(settings, kv, outbox)
        servicer = PostsServicer(posts)
        add = posts_pb2_grpc.add_PostsServiceServicer_to_server
        async with grpc_server(
            settings,
            [Servicer(SERVICE, lambda s: add(servicer, s))],
            watch=[kv.commit_pressure(settings.kv_commit_target_ms)],
        ):
            yield
