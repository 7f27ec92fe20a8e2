"""The route table: each REST endpoint declared once, with what OpenAPI needs to describe it.

``@endpoint(...)`` registers a handler with its method, path, auth rule, body and response
models; :func:`mount` wraps each in the common request pipeline (rate limits, auth, body and
paging validation) and :mod:`mt_gateway.openapi` renders the same table as OpenAPI 3.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute
from mt_core.criticality import Criticality
from mt_core.errors import InvalidArgument, TooLarge, Unauthenticated
from mt_core.rpc.services import Services
from mt_core.telemetry import annotate
from mt_kv_client import KV
from mt_schema.users import Handles, session_user
from pydantic import BaseModel, ValidationError
from redis.asyncio import Redis

from mt_gateway.classes import class_of
from mt_gateway.limits import Limit, RateLimiter
from mt_gateway.settings import Settings

Auth = Literal["none", "required", "optional"]


@dataclass
class Ctx:
    """What a handler gets: the request, the service clients and what the pipeline established."""

    request: web.Request
    b: Services
    settings: Settings
    redis: Redis
    kv: KV
    handles: Handles
    viewer: str | None = None
    token: str | None = None
    body: Any = None
    limit: int = 20
    cursor: str = ""

    def param(self, name: str) -> str:
        return self.request.match_info[name]

    @property
    def me(self) -> str:
        assert self.viewer is not None  # auth="required" routes only
        return self.viewer


Handler = Callable[[Ctx], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    handler: Handler
    summary: str
    auth: Auth = "none"
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    status: int = 200
    paged: bool = False
    errors: tuple[int, ...] = ()
    headers: tuple[str, ...] = ()  # request headers worth documenting (Idempotency-Key)
    extra_query: tuple[str, ...] = field(default_factory=tuple)


ENDPOINTS: list[Endpoint] = []


def endpoint(method: str, path: str, summary: str, **options: Any) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ENDPOINTS.append(Endpoint(method, path, handler, summary, **options))
        return handler

    return register


# pydantic error types -> our codes, so a client can tell "too long" from "missing".
_FIELD_CODES = {
    ("text", "string_too_long"): "text_too_long",
    ("text", "string_too_short"): "text_empty",
}


def _validation_error(err: ValidationError) -> InvalidArgument:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    code = _FIELD_CODES.get((where, first["type"]))
    if code is None:
        code = "unknown_field" if first["type"] == "extra_forbidden" else f"invalid_{where}"
    return InvalidArgument(f"{where}: {first['msg']}", code=code)


async def _parse_body(request: web.Request, model: type[BaseModel], max_bytes: int) -> BaseModel:
    if request.content_length is not None and request.content_length > max_bytes:
        raise TooLarge(f"request body is over {max_bytes} bytes", code="too_large")
    raw = await request.read()
    if len(raw) > max_bytes:
        raise TooLarge(f"request body is over {max_bytes} bytes", code="too_large")
    try:
        data = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument("request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidArgument("request body must be a JSON object", code="invalid_json")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise _validation_error(err) from None


def _paging(request: web.Request) -> tuple[int, str]:
    raw = request.query.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidArgument("limit must be an integer from 1 to 100", code="invalid_limit")
    cursor = request.query.get("cursor", "")
    if len(cursor) > 512:
        raise InvalidArgument("malformed cursor", code="invalid_cursor")
    return int(raw), cursor


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("expected 'Authorization: Bearer <token>'", code="invalid_token")
    return token.strip()


def client_ip(request: web.Request) -> str:
    return request.remote or "unknown"


@dataclass(frozen=True)
class Clients:
    """What the request pipeline and the handlers talk to."""

    b: Services
    redis: Redis
    kv: KV
    limiter: RateLimiter
    handles: Handles  # handle -> user id, remembered (they do not change)


def mount(
    app: web.Application, clients: Clients, settings: Settings
) -> dict[AbstractRoute, tuple[Criticality, str]]:
    """Add every endpoint's route; returns each route's criticality class and name, for
    admission (a route without a class is a startup error)."""
    classes: dict[AbstractRoute, tuple[Criticality, str]] = {}
    for ep in ENDPOINTS:
        cls = class_of(ep.method, ep.path)
        route = app.router.add_route(ep.method, ep.path, _pipeline(ep, clients, settings))
        classes[route] = (cls, f"{ep.method} {ep.path}")
    return classes


def _pipeline(
    ep: Endpoint, clients: Clients, settings: Settings
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        ctx = Ctx(request, clients.b, settings, clients.redis, clients.kv, clients.handles)
        await _admit(ep, ctx, clients)
        if ep.paged:
            ctx.limit, ctx.cursor = _paging(request)
        if ep.body is not None:
            ctx.body = await _parse_body(request, ep.body, settings.max_body_bytes)
        return await ep.handler(ctx)

    return handle


async def _admit(ep: Endpoint, ctx: Ctx, clients: Clients) -> None:
    """Who is asking (a session read in the KV itself), then the address's and the user's
    rate limits in one Redis round trip. A refused token still counts against its address."""
    limits: list[Limit] = [("ip", client_ip(ctx.request), ctx.settings.rate_per_ip_per_min)]
    if ep.auth != "none":
        ctx.token = bearer(ctx.request)
        if ctx.token is None and ep.auth == "required":
            await clients.limiter.hit_all(limits)
            raise Unauthenticated("this endpoint needs a bearer token", code="unauthenticated")
        if ctx.token is not None:
            ctx.viewer = await session_user(clients.kv, ctx.token)
            if ctx.viewer is None:
                await clients.limiter.hit_all(limits)
                raise Unauthenticated("invalid or revoked token", code="invalid_token")
            annotate(user_id=ctx.viewer)
            limits.append(("user", ctx.viewer, ctx.settings.rate_per_user_per_min))
    await clients.limiter.hit_all(limits)
