"""Clients of the product services, one channel each, as one object: for the processes that
talk to all of them (the gateway, the async workers)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

from mt_proto import (
    feed_pb2_grpc,
    graph_pb2_grpc,
    posts_pb2_grpc,
    users_pb2_grpc,
)

from mt_core.rpc.client import channel
from mt_core.settings import ServiceSettings


@dataclass(frozen=True)
class Services:
    users: users_pb2_grpc.UsersServiceAsyncStub
    graph: graph_pb2_grpc.GraphServiceAsyncStub
    posts: posts_pb2_grpc.PostsServiceAsyncStub
    feed: feed_pb2_grpc.FeedServiceAsyncStub


@asynccontextmanager
async def services(settings: ServiceSettings) -> AsyncIterator[Services]:
    """Stubs of every product service at the settings' addresses, closed on exit."""
    timeout = settings.default_rpc_timeout_ms
    async with AsyncExitStack() as stack:
        addrs = settings.service_addrs()
        chans = {
            name: await stack.enter_async_context(channel(addrs[name], timeout))
            for name in ("users", "graph", "posts", "feed")
        }
        yield Services(
            users=users_pb2_grpc.UsersServiceStub(chans["users"]),
            graph=graph_pb2_grpc.GraphServiceStub(chans["graph"]),
            posts=posts_pb2_grpc.PostsServiceStub(chans["posts"]),
            feed=feed_pb2_grpc.FeedServiceStub(chans["feed"]),
        )
