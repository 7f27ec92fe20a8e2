"""The gateway's gRPC clients, one channel per service, as one object handlers receive."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from mt_core.rpc.client import channel
from mt_proto import (
    counters_pb2_grpc,
    feed_pb2_grpc,
    graph_pb2_grpc,
    posts_pb2_grpc,
    users_pb2_grpc,
)

from mt_gateway.settings import Settings


@dataclass(frozen=True)
class Backends:
    users: users_pb2_grpc.UsersServiceAsyncStub
    graph: graph_pb2_grpc.GraphServiceAsyncStub
    posts: posts_pb2_grpc.PostsServiceAsyncStub
    counters: counters_pb2_grpc.CountersServiceAsyncStub
    feed: feed_pb2_grpc.FeedServiceAsyncStub


@asynccontextmanager
async def backends(settings: Settings) -> AsyncIterator[Backends]:
    timeout = settings.default_rpc_timeout_ms
    async with AsyncExitStack() as stack:

        async def open_(addr: str):  # type: ignore[no-untyped-def]
            return await stack.enter_async_context(channel(addr, timeout))

        yield Backends(
            users=users_pb2_grpc.UsersServiceStub(await open_(settings.users_addr)),
            graph=graph_pb2_grpc.GraphServiceStub(await open_(settings.graph_addr)),
            posts=posts_pb2_grpc.PostsServiceStub(await open_(settings.posts_addr)),
            counters=counters_pb2_grpc.CountersServiceStub(await open_(settings.counters_addr)),
            feed=feed_pb2_grpc.FeedServiceStub(await open_(settings.feed_addr)),
        )
