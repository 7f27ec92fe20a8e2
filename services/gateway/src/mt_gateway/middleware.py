"""aiohttp middleware: tracing at the edge, every failure as the contract's error body, RED
metrics per route."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from mt_core.errors import MinithreadsError
from opentelemetry import propagate, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from prometheus_client import Counter, Histogram

from mt_gateway.errors import error_response, response_for

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# aiohttp's own HTTP errors (unknown path, wrong method, body too large) by status.
_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    400: "invalid_argument",
}


CLIENT_CLOSED = 499  # nginx's "client closed request": never sent, counted apart from 5xx

# The context of a request that is not traced: its calls see an unsampled parent, so nothing
# beneath it starts a trace of its own (a Redis command's span, say).
_UNTRACED = NonRecordingSpan(SpanContext(1, 1, is_remote=False, trace_flags=TraceFlags(0)))


def tracing_middleware(sample_ratio: float) -> Middleware:
    """Traces start here: a request with a sampled ``traceparent`` continues its caller's
    trace, an unsampled one stays unsampled, and of the rest ``sample_ratio`` start one. The
    others cost one random draw — no span, no context to carry (the calls they make skip
    tracing: mt_core.telemetry.outbound)."""
    tracer = trace.get_tracer(__name__)

    @web.middleware
    async def traced(request: web.Request, handler: Handler) -> web.StreamResponse:
        parent = propagate.extract(request.headers) if "traceparent" in request.headers else None
        caller = trace.get_current_span(parent).get_span_context() if parent else None
        sampled = caller.trace_flags.sampled if caller and caller.is_valid else None
        if sampled is None:
            sampled = random.random() < sample_ratio
        if not sampled:
            with trace.use_span(_UNTRACED):
                return await handler(request)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        attributes = {
            "http.method": request.method,
            "http.route": route,
            "http.target": request.path_qs,
        }
        with tracer.start_as_current_span(
            f"{request.method} {route}", context=parent, kind=SpanKind.SERVER, attributes=attributes
        ) as span:
            response = await handler(request)
            span.set_attribute("http.status_code", response.status)
            return response

    return traced


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except MinithreadsError as err:
        return response_for(err)
    except ConnectionResetError:
        # The client went away mid-request (a page left while it loaded): nobody to answer,
        # nothing failed on our side, and no sign of overload for admission to back off from.
        return error_response(CLIENT_CLOSED, "client_closed_request", "the client went away")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        return error_response(exc.status, code, exc.reason)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        return error_response(500, "internal", "internal error")


REQUESTS = Counter(
    "gateway_requests_total", "REST requests by route and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "gateway_request_seconds",
    "REST request latency by route",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """RED per endpoint, labelled by the route template (not the raw path: bounded labels)."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_CLOSED  # the client went away before the answer
        raise
    finally:
        LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        REQUESTS.labels(request.method, route, str(status)).inc()
