"""Wiring of the feed service: what it serves and what it holds open, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mt_core.rpc.server import Servicer, grpc_server
from mt_kv_client import KVClient
from mt_proto import feed_pb2, feed_pb2_grpc

from mt_feed.domain import Feed
from mt_feed.grpc_api import FeedServicer
from mt_feed.settings import Settings

SERVICE = feed_pb2.DESCRIPTOR.services_by_name["FeedService"].full_name


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    async with KVClient(settings.kv_addr) as kv:
        feed = Feed(settings, kv)
        servicer = FeedServicer(feed)
        add = feed_pb2_grpc.add_FeedServiceServicer_to_server
        async with grpc_server(
            settings,
            [Servicer(SERVICE, lambda s: add(servicer, s))],
            watch=[kv.commit_pressure(settings.kv_commit_target_ms)],
        ):
            yield
