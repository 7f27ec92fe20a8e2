"""Rate limits (Redis, sliding one-minute windows) and load shedding (an in-flight bound).

Rate limits protect the backends from one client and accounts from password guessing; load
shedding protects everyone from too much at once: past ``max_in_flight`` a request is refused
immediately with 503 + Retry-After, which costs almost nothing, rather than queued until
every request is too late.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from mt_core.errors import Overloaded, RateLimited, Unavailable
from mt_core.telemetry import event
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
WINDOW_S = 60

SHED = Counter("gateway_shed_total", "Requests refused by load shedding")
LIMITED = Counter("gateway_rate_limited_total", "Requests refused by a rate limit", ["scope"])
IN_FLIGHT = Gauge("gateway_in_flight", "Requests in progress")


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def hit(self, scope: str, subject: str, per_min: int, *, fail_open: bool = True) -> None:
        """Count one request of ``subject`` in ``scope``; RateLimited past ``per_min``.

        If Redis is unreachable, ordinary limits let the request through (availability over
        strictness) while security limits (``fail_open=False``) refuse it.
        """
        now = time.time()
        window, elapsed = divmod(now, WINDOW_S)
        current = f"rl:{scope}:{subject}:{int(window)}"
        previous = f"rl:{scope}:{subject}:{int(window) - 1}"
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incr(current)
                pipe.expire(current, WINDOW_S * 2)
                pipe.get(previous)
                count, _, before = await pipe.execute()
        except RedisError:
            if fail_open:
                return
            raise Unavailable("try again shortly", code="unavailable") from None
        # Sliding window: the previous window's count, weighted by how much of it still
        # overlaps the last minute, plus this window's. No burst of 2x at a boundary.
        estimate = int(before or 0) * (1 - elapsed / WINDOW_S) + int(count)
        if estimate > per_min:
            LIMITED.labels(scope).inc()
            event("rate_limited", scope=scope)
            retry = WINDOW_S - elapsed
            raise RateLimited("too many requests; slow down", retry_after_s=retry)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UNSHED = frozenset({"/healthz", "/readyz", "/metrics"})


def shedding_middleware(max_in_flight: int) -> Middleware:
    in_flight = 0

    @web.middleware
    async def shed(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        if request.path in UNSHED:
            return await handler(request)
        if in_flight >= max_in_flight:
            SHED.inc()
            event("shed", in_flight=in_flight)
            raise Overloaded("the service is busy; try again shortly", code="overloaded")
        in_flight += 1
        IN_FLIGHT.set(in_flight)
        try:
            return await handler(request)
        finally:
            in_flight -= 1
            IN_FLIGHT.set(in_flight)

    return shed
