"""The control room's data: named Prometheus queries, for the operator only.

``/control`` itself is a page like the app's (no data in it); everything it shows comes from
``/control/api/*``, which needs the operator's bearer token (:mod:`mt_core.operator`): none or
an unknown one is 401 ``operator_required``, a user's session token 403 ``not_operator``.
The browser never sends PromQL: it names queries from :data:`QUERIES`, so what an operator's
page can cost Prometheus is bounded here. Prometheus itself listens on loopback only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from mt_core.errors import InvalidArgument, PermissionDenied, Unauthenticated, Unavailable
from mt_core.operator import ensure_token, is_operator
from mt_schema.users import session_user

from mt_gateway.routing import Clients, client_ip
from mt_gateway.settings import Settings

# Series over time (query_range). Rates over 15 s: three scrapes, smooth enough to read live.
QUERIES: Mapping[str, str] = {
    "signups": 'sum(rate(gateway_requests_total{route="/v1/accounts",status="201"}[15s]))',
    "requests": "topk(8, sum by (method, route) "
    '(rate(gateway_requests_total{route=~"/v1/.*"}[15s])))',
    "p99": "topk(8, histogram_quantile(0.99, sum by (le, method, route) "
    '(rate(gateway_request_seconds_bucket{route=~"/v1/.*"}[30s]))))',
    "shed": "sum by (criticality) (rate(gateway_shed_total[15s]))",
    "rate_limited": "sum by (scope) (rate(gateway_rate_limited_total[15s]))",
    "admission": "max(gateway_admission_limit) or max(gateway_in_flight)",
    "in_flight": "max(gateway_in_flight)",
    "backlog": "sum by (kind) (jobs_lag)",
    "job_rate": "sum by (kind) (jobs_rate_per_s)",
    "deferred": "max by (kind) (jobs_deferred)",
    "failovers": "sum by (shard) (increase(kv_failovers_total[15s])) > 0",
    "moves": "sum by (kind) (kv_moves_in_progress) > 0",
}
# The KV as it is now (instant queries).
NOW: Mapping[str, str] = {
    "epoch": "kv_shard_epoch",
    "primary": "kv_shard_primary == 1",
    "alive": "kv_replica_alive",
    "job_class": "max by (kind, class) (jobs_class)",
}
MAX_MINUTES = 60
PROMETHEUS_TIMEOUT_S = 3.0


def routes(settings: Settings, clients: Clients) -> list[web.RouteDef]:
    token_of = _operator_token(Path(settings.home))

    async def guard(request: web.Request) -> None:
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if presented and is_operator(presented, token_of()):
            return
        await clients.limiter.hit_all([("ip", client_ip(request), settings.rate_per_ip_per_min)])
        if presented and await session_user(clients.kv, presented) is not None:
            raise PermissionDenied("the control room is for operators", code="not_operator")
        raise Unauthenticated(
            "the control room needs the operator's token (`minithreads operator url`)",
            code="operator_required",
        )

    async def series(request: web.Request) -> web.Response:
        await guard(request)
        names = _names(request.query.get("names", ""), QUERIES)
        minutes = _bounded(request.query.get("minutes", "15"), 1, MAX_MINUTES)
        step_s = _bounded(request.query.get("step", "5"), 1, 60)
        end = time.time()
        params = {"start": f"{end - minutes * 60:.3f}", "end": f"{end:.3f}", "step": f"{step_s}"}
        found = await asyncio.gather(
            *(_prometheus(request, "query_range", {"query": QUERIES[n], **params}) for n in names)
        )
        return web.json_response({"at": end, "series": dict(zip(names, found, strict=True))})

    async def now(request: web.Request) -> web.Response:
        await guard(request)
        found = await asyncio.gather(
            *(_prometheus(request, "query", {"query": q}) for q in NOW.values())
        )
        return web.json_response({"at": time.time(), "now": dict(zip(NOW, found, strict=True))})

    async def links(request: web.Request) -> web.Response:
        await guard(request)
        return web.json_response({"zipkin": settings.zipkin_ui_url, "services": TRACED})

    return [
        web.get("/control/api/series", series),
        web.get("/control/api/now", now),
        web.get("/control/api/links", links),
    ]


# The services whose traces Zipkin holds (their OTEL_SERVICE_NAME).
TRACED = ["gateway", "users", "graph", "posts", "feed", "workers", "kv"]


def _operator_token(home: Path) -> Callable[[], str]:
    token: list[str] = []

    def get() -> str:
        if not token:  # made on first use: an operator may ask for the link after start
            token.append(ensure_token(home))
        return token[0]

    return get


def _names(raw: str, table: Mapping[str, str]) -> list[str]:
    names = [n for n in raw.split(",") if n]
    unknown = [n for n in names if n not in table]
    if not names or unknown:
        known = ", ".join(table)
        raise InvalidArgument(f"names must be some of: {known}", code="unknown_query")
    return names


def _bounded(raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise InvalidArgument(f"expected a whole number, got {raw[:20]!r}") from None
    return min(high, max(low, value))


async def _prometheus(request: web.Request, api: str, params: dict[str, str]) -> Any:
    """Prometheus's ``data.result`` for one query; 503 if it does not answer."""
    session: aiohttp.ClientSession = request.app[PROMETHEUS_SESSION]
    url = f"{request.app[PROMETHEUS_URL]}/api/v1/{api}"
    try:
        async with session.get(url, params=params) as reply:
            body = await reply.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as err:
        raise Unavailable(f"Prometheus did not answer ({type(err).__name__})") from None
    if body.get("status") != "success":
        raise Unavailable(f"Prometheus refused a query: {body.get('error', '?')}")
    return body["data"]["result"]


PROMETHEUS_SESSION = web.AppKey("prometheus_session", aiohttp.ClientSession)
PROMETHEUS_URL = web.AppKey("prometheus_url", str)


def lifetime(settings: Settings) -> Callable[[web.Application], AsyncIterator[None]]:
    """The HTTP client to Prometheus, for the application's lifetime (cleanup_ctx)."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=PROMETHEUS_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            app[PROMETHEUS_SESSION] = session
            app[PROMETHEUS_URL] = settings.prometheus_url.rstrip("/")
            yield

    return ctx
