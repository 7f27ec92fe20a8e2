"""Wiring of the gateway: the aiohttp application, its clients, and their lifetimes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from mt_gateway import health
from mt_gateway.middleware import errors_middleware
from mt_gateway.settings import Settings

log = logging.getLogger(__name__)


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def build_app(settings: Settings, redis: Redis) -> web.Application:
    application = web.Application(middlewares=[errors_middleware], client_max_size=64 * 1024)
    application.add_routes(health.routes(settings, redis))
    application.router.add_get("/metrics", metrics)
    return application


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    redis = Redis.from_url(settings.redis_url, socket_timeout=settings.health_timeout_ms / 1000)
    runner = web.AppRunner(
        build_app(settings, redis), shutdown_timeout=settings.shutdown_grace_ms / 1000
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.http_port, reuse_address=True)
    await site.start()
    log.info("HTTP serving", extra={"port": settings.http_port})
    try:
        yield
    finally:
        await runner.cleanup()
        await redis.aclose()
