"""Wiring of the counters service: what it serves and what it holds open, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mt_core.rpc.server import Servicer, grpc_server
from mt_kv_client import KVClient
from mt_proto import counters_pb2, counters_pb2_grpc
from redis.asyncio import Redis

from mt_counters.domain import Counters
from mt_counters.grpc_api import CountersServicer
from mt_counters.settings import Settings

SERVICE = counters_pb2.DESCRIPTOR.services_by_name["CountersService"].full_name


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    redis = Redis.from_url(settings.redis_url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        async with KVClient(settings.kv_addr) as kv:
            servicer = CountersServicer(Counters(settings, kv, redis))
            add = counters_pb2_grpc.add_CountersServiceServicer_to_server
            async with grpc_server(
                settings,
                [Servicer(SERVICE, lambda s: add(servicer, s))],
                watch=[kv.commit_pressure(settings.kv_commit_target_ms)],
            ):
                yield
    finally:
        await redis.aclose()
