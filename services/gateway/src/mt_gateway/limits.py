"""Rate limits (Redis, sliding one-minute windows) and admission at the edge.

Rate limits protect the backends from one client and accounts from password guessing.
Admission protects everyone from too much at once: each route has a criticality class, and
the gate of :mod:`mt_gateway.admission` decides, before tracing, auth, Redis or any gRPC, whether
the request goes in; a refusal is a pre-rendered 503 with Retry-After, which costs almost
nothing, rather than a place in a queue until every request is too late.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_urldispatcher import AbstractRoute
from mt_core import criticality
from mt_core.criticality import Criticality
from mt_core.errors import Overloaded, RateLimited
from mt_core.foreground import ForegroundHealth, publish
from mt_core.telemetry import event, untraced
from prometheus_client import Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mt_gateway.admission import GateState, Verdict

log = logging.getLogger(__name__)
WINDOW_S = 60
REDIS_DOWN_RETRY_S = 2.0  # a security limit that cannot count refuses: back soon

LIMITED = Counter("gateway_rate_limited_total", "Requests refused by a rate limit", ["scope"])
REFUSED = Counter(
    "gateway_shed_total",
    "Requests refused at admission, by criticality class and reason (shed before the limit, "
    "or the limit itself)",
    ["criticality", "reason"],
)
ADMITTED = Counter("gateway_admitted_total", "Requests admitted, by criticality", ["criticality"])
IN_FLIGHT = Gauge("gateway_in_flight", "Requests in progress")
LIMIT = Gauge("gateway_admission_limit", "The admission limit in force (requests in flight)")
PRESSURE = Gauge("gateway_pressure", "Foreground pressure (1.0: the gateway starts refusing)")
RATIO = Gauge("gateway_latency_ratio", "Admitted requests' latency over their unloaded latency")
SHED_P = Gauge("gateway_shed_probability", "Refusal probability before the limit", ["criticality"])


Limit = tuple[str, str, int]  # scope, subject, requests per minute


class RateLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def hit(self, scope: str, subject: str, per_min: int, *, fail_open: bool = True) -> None:
        """Count one request of ``subject`` in ``scope``; RateLimited past ``per_min``."""
        await self.hit_all([(scope, subject, per_min)], fail_open=fail_open)

    async def hit_all(self, limits: Sequence[Limit], *, fail_open: bool = True) -> None:
        """Count one request against each of ``limits`` — one round trip for all of them;
        RateLimited at the first one past its limit.

        If Redis is unreachable, ordinary limits let the request through (availability over
        strictness) while security limits (``fail_open=False``) refuse it.
        """
        now = time.time()
        window, elapsed = divmod(now, WINDOW_S)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for scope, subject, _ in limits:
                    current = f"rl:{scope}:{subject}:{int(window)}"
                    pipe.incr(current)
                    pipe.expire(current, WINDOW_S * 2)
                    pipe.get(f"rl:{scope}:{subject}:{int(window) - 1}")
                replies = await pipe.execute()
        except RedisError:
            if fail_open:
                return
            # Turned away before any work, as admission turns requests away: any client may
            # send it again after Retry-After (a login or an assertion is not idempotent).
            raise Overloaded(
                "attempts cannot be counted right now; try again shortly",
                retry_after_s=REDIS_DOWN_RETRY_S,
            ) from None
        for i, (scope, _, per_min) in enumerate(limits):
            count, _, before = replies[3 * i : 3 * i + 3]
            # Sliding window: the previous window's count, weighted by how much of it still
            # overlaps the last minute, plus this window's. No burst of 2x at a boundary.
            estimate = int(before or 0) * (1 - elapsed / WINDOW_S) + int(count)
            if estimate > per_min:
                LIMITED.labels(scope).inc()
                event("rate_limited", scope=scope)
                raise RateLimited("too many requests; slow down", retry_after_s=WINDOW_S - elapsed)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Gate(Protocol):
    """What the middleware needs of an admission policy (adaptive, or the old fixed bound)."""

    def admit(self, cls: Criticality, now: float) -> Verdict: ...

    def done(
        self,
        route: str,
        latency_s: float,
        now: float,
        *,
        cls: Criticality = Criticality.DEFAULT,
        dropped: bool = False,
        alone: bool = False,
    ) -> None: ...

    def state(self, now: float) -> GateState: ...


_REFUSAL = json.dumps(
    {"error": {"code": "overloaded", "message": "the service is busy; try again shortly"}}
).encode()


def _refusal(retry_after_s: float) -> web.Response:
    return web.Response(
        body=_REFUSAL,
        status=503,
        content_type="application/json",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )


def admission_middleware(
    gate: Gate, routes: Mapping[AbstractRoute, tuple[Criticality, str]]
) -> Middleware:
    """Admit by the route's class; requests of routes not in ``routes`` (health, metrics, the
    API document, static files, unknown paths) are never refused. Must run first: a refusal
    costs a dictionary lookup, the gate's arithmetic and a pre-rendered response."""
    refused = {
        (cls, reason): REFUSED.labels(cls.label, reason)
        for cls in Criticality
        for reason in ("shed", "limit")
    }
    admitted = {cls: ADMITTED.labels(cls.label) for cls in Criticality}

    @web.middleware
    async def admit(request: web.Request, handler: Handler) -> web.StreamResponse:
        entry = routes.get(request.match_info.route)
        if entry is None:
            return await handler(request)
        cls, name = entry
        started = time.monotonic()
        verdict = gate.admit(cls, started)
        if not verdict.admitted:
            refused[cls, verdict.reason].inc()
            return _refusal(verdict.retry_after_s)
        admitted[cls].inc()
        token = criticality.set_current(cls)
        dropped = True
        try:
            response = await handler(request)
            dropped = response.status >= 500  # an overloaded backend or a failure: back off
            return response
        except asyncio.CancelledError:
            dropped = False  # the client left (or we are stopping): not a sign of overload
            raise
        finally:
            criticality.reset(token)
            now = time.monotonic()
            gate.done(name, now - started, now, cls=cls, dropped=dropped, alone=verdict.alone)

    return admit


async def publish_forever(gate: Gate, redis: Redis, interval_s: float) -> None:
    """The gate's state to the metrics and, for the async platform, to Redis."""
    while True:
        state = gate.state(time.monotonic())
        IN_FLIGHT.set(state.in_flight)
        LIMIT.set(state.limit)
        PRESSURE.set(state.pressure)
        RATIO.set(state.latency_ratio)
        for cls, p in state.shed_p.items():
            SHED_P.labels(cls.label).set(p)
        health = ForegroundHealth(
            pressure=round(state.pressure, 3),
            limit=state.limit,
            in_flight=state.in_flight,
            refused_share=round(state.refused_share, 4),
            latency_ratio=round(state.latency_ratio, 3),
            at_ms=time.time_ns() // 1_000_000,
        )
        try:
            with untraced():
                await publish(redis, health)
        except RedisError:
            log.warning("cannot publish the foreground's health")
        await asyncio.sleep(interval_s)
