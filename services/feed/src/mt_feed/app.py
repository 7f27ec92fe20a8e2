"""Wiring of the feed service: what it serves and what it holds open, in one place."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from mt_core.rpc.server import grpc_server

from mt_feed.settings import Settings


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    # Only health is served until the service's contract is implemented.
    async with grpc_server(settings, servicers=()):
        yield
