"""Wiring of the gateway: the aiohttp application, its clients, and their lifetimes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from aiohttp import web
from mt_core.rpc.services import services
from mt_kv_client import KVClient
from mt_schema.users import Handles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.asyncio import Redis

from mt_gateway import api, control, health, openapi
from mt_gateway import web as site
from mt_gateway.admission import AdaptiveLimit, Admission, FixedLimit, LimitSettings
from mt_gateway.limits import Gate, RateLimiter, admission_middleware, publish_forever
from mt_gateway.middleware import errors_middleware, metrics_middleware, tracing_middleware
from mt_gateway.routing import Clients, mount
from mt_gateway.settings import Settings

log = logging.getLogger(__name__)
assert api  # the handlers register themselves on import


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def gate_of(settings: Settings) -> Gate:
    if settings.admission == "fixed":
        return FixedLimit(settings.max_in_flight)
    limit = LimitSettings(
        initial=settings.admission_initial_limit,
        minimum=settings.admission_min_limit,
        delay_target_ms=settings.admission_delay_target_ms,
    )
    return Admission(AdaptiveLimit(limit))


def build_app(settings: Settings, clients: Clients, gate: Gate) -> web.Application:
    application = web.Application(
        middlewares=[
            tracing_middleware(settings.trace_sample_ratio),
            errors_middleware,
            metrics_middleware,
        ],
        client_max_size=settings.max_body_bytes,
    )
    application["limiter"] = clients.limiter
    application.add_routes(health.routes(settings, clients.redis))
    application.router.add_get("/metrics", metrics)
    document = openapi.spec()
    application.router.add_get("/openapi.json", lambda _: _json(document))
    application.add_routes(site.routes(Path(settings.web_root)))
    application.add_routes(control.routes(settings, clients))
    application.cleanup_ctx.append(control.lifetime(settings))
    classes = mount(application, clients, settings)
    # Admission before everything else, tracing included: a refusal must cost less than
    # recording it would.
    application.middlewares.insert(0, admission_middleware(gate, classes))
    return application


async def _json(document: object) -> web.Response:
    return web.json_response(document)


@asynccontextmanager
async def app(settings: Settings) -> AsyncIterator[None]:
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.health_timeout_ms / 1000,
        socket_connect_timeout=settings.health_timeout_ms / 1000,
    )
    gate = gate_of(settings)
    async with services(settings) as b, KVClient(settings.kv_addr) as kv:
        clients = Clients(b, redis, kv, RateLimiter(redis), Handles(kv))
        runner = web.AppRunner(
            build_app(settings, clients, gate),
            shutdown_timeout=settings.shutdown_grace_ms / 1000,
            access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
        )
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.http_port, reuse_address=True)
        await site.start()
        log.info(
            "HTTP serving", extra={"port": settings.http_port, "admission": settings.admission}
        )
        publisher = asyncio.create_task(
            publish_forever(gate, redis, settings.admission_publish_ms / 1000), name="admission"
        )
        try:
            yield
        finally:
            publisher.cancel()
            await runner.cleanup()
            await redis.aclose()
