"""A gRPC server's lifetime as an async context manager: health, error mapping, overload
control, graceful stop.

Every service serves ``grpc.health.v1`` (overall and per service name), maps our errors to
status codes through :mod:`mt_core.rpc.status`, never leaks a traceback to a caller, restores
each call's deadline and criticality class for the calls it makes in turn, refuses the lowest
classes while it is overloaded (:mod:`mt_core.overload`), and on exit reports NOT_SERVING
before draining in-flight calls for the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from mt_core import criticality
from mt_core.criticality import Criticality
from mt_core.errors import Internal, MinithreadsError, Overloaded
from mt_core.metrics import RPC_REQUESTS, RPC_SECONDS
from mt_core.overload import LevelController, ServiceAdmission
from mt_core.rpc import deadline
from mt_core.rpc.status import status_of, trailers_of
from mt_core.settings import ServiceSettings

log = logging.getLogger(__name__)

# gRPC's default 4 MiB is low for batch KV calls; the KV enforces its own per-item limits.
MAX_MESSAGE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Servicer:
    """One gRPC service to mount: its full name (for health) and how to add it."""

    full_name: str
    add: Callable[[grpc.aio.Server], None]


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: BaseException) -> None:
    err = exc if isinstance(exc, MinithreadsError) else Internal("internal error")
    if not isinstance(exc, MinithreadsError):
        log.exception("unhandled error in RPC", exc_info=exc)
    await context.abort(status_of(err), err.message, trailers_of(err))


class ErrorsAndDeadlines(grpc.aio.ServerInterceptor):
    """Maps raised errors to statuses, scopes the request's deadline and criticality for
    outbound calls, and refuses what the overload control does not admit.

    grpc.aio consults interceptors on every call; the wrapped handler of a method is made
    once and reused while the servicer hands over the same handler (it always does)."""

    def __init__(self, admission: ServiceAdmission) -> None:
        self._admission = admission
        self._wrapped: dict[str, tuple[Any, Any]] = {}  # method -> (handler, wrapped)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = _method_of(handler_call_details)
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = _wrap(handler, method, self._admission)
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _wrap(handler: Any, method: str, admission: ServiceAdmission) -> Any:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(handler.unary_unary, method, admission),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


def _method_of(details: grpc.HandlerCallDetails) -> str:
    method: Any = details.method  # str in grpc.aio, though some versions hand over bytes
    return method.decode() if isinstance(method, bytes) else str(method)


# Handlers whose caller went away (cancelled, or out of time) and that are finishing anyway.
_detached: set[asyncio.Task[Any]] = set()


async def _run_to_completion(work: Awaitable[Any]) -> Any:
    """Await ``work`` in a task of its own that a cancelled call does not interrupt.

    A handler is a sequence of writes (a signup: the record, the handle, the legacy link); cut
    at an arbitrary await by the caller's deadline, it would leave half of them — an account
    whose legacy link was never made, so the legacy account could never join. The caller stops
    waiting; the handler finishes (its outbound calls are still bounded by the deadline).
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if not task.done():
            _detached.add(task)
            task.add_done_callback(_detached.discard)
            task.add_done_callback(_consume)
        raise


def _consume(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: nobody is left to see it, and asyncio would log it


def criticality_of(context: grpc.aio.ServicerContext[Any, Any]) -> Criticality:
    """The class the caller sent (DEFAULT for callers that send none)."""
    for key, value in context.invocation_metadata() or ():
        if key == criticality.METADATA_KEY:
            return Criticality.parse(value if isinstance(value, str) else value.decode())
    return Criticality.DEFAULT


def _wrap_unary(
    inner: Callable[..., Awaitable[Any]], method: str, admission: ServiceAdmission
) -> Callable[..., Awaitable[Any]]:
    seconds = RPC_SECONDS.labels(method)  # bound once: the hot path does no label lookup
    ok = RPC_REQUESTS.labels(method, "OK")

    async def wrapped(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        cls = criticality_of(context)
        if not admission.admits(cls):
            RPC_REQUESTS.labels(method, "RESOURCE_EXHAUSTED").inc()
            await _abort(context, Overloaded("the service is busy", code="overloaded"))
        token = deadline.set_remaining(context.time_remaining())
        class_token = criticality.set_current(cls)
        started = time.perf_counter()
        code = "OK"
        try:
            return await _run_to_completion(inner(request, context))
        except grpc.aio.AbortError:
            code = "ABORTED_BY_HANDLER"
            raise
        except Exception as exc:
            code = _status_name(exc)
            await _abort(context, exc)
        finally:
            criticality.reset(class_token)
            deadline.reset(token)
            seconds.observe(time.perf_counter() - started)
            (ok if code == "OK" else RPC_REQUESTS.labels(method, code)).inc()

    return wrapped


def _status_name(exc: BaseException) -> str:
    return status_of(exc).name if isinstance(exc, MinithreadsError) else "INTERNAL"


def _wrap_stream(inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        token = deadline.set_remaining(context.time_remaining())
        try:
            async for item in inner(request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await _abort(context, exc)
        finally:
            deadline.reset(token)

    return wrapped


@dataclass(frozen=True)
class RunningServer:
    server: grpc.aio.Server
    port: int  # the bound port (useful when the settings asked for 0)
    health: Any  # grpc_health's HealthServicer: set a service's status as the app sees fit
    admission: ServiceAdmission  # overload control: watch() what else saturates this service


@asynccontextmanager
async def grpc_server(
    settings: ServiceSettings,
    servicers: Sequence[Servicer] = (),
    *,
    watch: Sequence[Callable[[], float]] = (),
) -> AsyncIterator[RunningServer]:
    """Serve ``servicers`` plus health on ``settings.host:grpc_port`` for the block's lifetime;
    ``watch``: dependencies whose saturation counts as this service's overload (ratios to
    their targets, e.g. :meth:`mt_kv_client.KVClient.commit_pressure`)."""
    admission = ServiceAdmission(LevelController(lag_target_ms=settings.overload_lag_target_ms))
    for ratio in watch:
        admission.watch(ratio)
    server = grpc.aio.server(
        interceptors=[ErrorsAndDeadlines(admission)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second copy on the same port must fail, not share
        ],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for servicer in servicers:
        servicer.add(server)
    address = f"{settings.host}:{settings.grpc_port}"
    port = server.add_insecure_port(address)
    await server.start()
    serving = health_pb2.HealthCheckResponse.SERVING
    for name in ("", *(s.full_name for s in servicers)):
        await health_servicer.set(name, serving)
    log.info("gRPC serving", extra={"address": f"{settings.host}:{port}"})
    admission.start()
    try:
        yield RunningServer(server, port, health_servicer, admission)
    finally:
        await admission.stop()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(settings.shutdown_grace_ms / 1000)
        log.info("gRPC stopped")
