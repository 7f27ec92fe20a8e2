"""Our errors cross gRPC as themselves, and each maps to the contract's HTTP status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from mt_core import errors as e
from mt_core.rpc import status
from mt_core.rpc.client import call, channel
from mt_core.rpc.server import Servicer, grpc_server
from mt_core.settings import ServiceSettings
from mt_gateway.errors import HTTP_STATUS, http_status_of, response_for
from mt_kv_contract import errors as kv

RAISING: list[BaseException] = []


class _Raising:
    """A health servicer whose Check raises whatever the test put in RAISING."""

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        raise RAISING[-1]


@pytest.fixture(scope="module")
async def raising_addr() -> AsyncIterator[str]:
    """A real gRPC server in-process whose "test.Raising/Check" raises RAISING[-1]."""
    handler = grpc.method_handlers_generic_handler(
        "test.Raising",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                _Raising().Check,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            )
        },
    )
    settings = ServiceSettings(service_name="test", grpc_port=0, shutdown_grace_ms=100)
    mount = Servicer("test.Raising", lambda server: server.add_generic_rpc_handlers([handler]))
    async with grpc_server(settings, [mount]) as running:
        yield f"127.0.0.1:{running.port}"


async def _call_raising(addr: str, exc: BaseException) -> None:
    RAISING.append(exc)
    async with channel(addr, default_timeout_ms=2_000) as chan:
        method = chan.unary_unary(
            "/test.Raising/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        await call(method(health_pb2.HealthCheckRequest()))


@pytest.mark.parametrize(
    "error",
    [
        e.NotFound("no such user", code="user_not_found"),
        e.AlreadyExists("taken", code="handle_taken"),
        e.TooLarge("too big"),
        e.Aborted("conflict"),
        e.Overloaded("busy", retry_after_s=3),
        kv.NotPrimary("r1 is not the primary of shard 3"),
        kv.Moved("μshard 9 has moved"),
        kv.Indeterminate("outcome unknown"),
        kv.ConditionFailed("condition ABSENT failed"),
    ],
    ids=lambda err: type(err).__name__,
)
async def test_error__crosses_grpc_as_itself(raising_addr: str, error: e.MinithreadsError) -> None:
    with pytest.raises(type(error)) as caught:
        await _call_raising(raising_addr, error)
    assert type(caught.value) is type(error)
    assert caught.value.code == error.code
    assert caught.value.message == error.message
    if isinstance(error, e.RateLimited):
        assert isinstance(caught.value, e.RateLimited)
        assert caught.value.retry_after_s == error.retry_after_s


async def test_unexpected_exception__becomes_internal_without_details(raising_addr: str) -> None:
    with pytest.raises(e.Internal) as caught:
        await _call_raising(raising_addr, KeyError("secret-table-name"))
    assert "secret" not in caught.value.message


async def test_health__is_served_for_the_mounted_service(raising_addr: str) -> None:
    from mt_core.rpc.health import check

    assert await check(raising_addr, "") == "serving"
    assert await check(raising_addr, "test.Raising") == "serving"
    assert await check(raising_addr, "no.such.Service") == "unknown"
    assert await check("127.0.0.1:1", "") == "unreachable"


@pytest.mark.parametrize(
    "cls", [c for c in e.ERROR_CLASSES.values() if c is not e.MinithreadsError]
)
def test_every_error__has_a_grpc_status_and_an_http_status(cls: type[e.MinithreadsError]) -> None:
    error = cls("boom")
    assert status.status_of(error) != grpc.StatusCode.OK
    assert 400 <= http_status_of(error) <= 599
    if cls.__module__ == e.__name__:  # a class registered elsewhere maps as its base does
        assert cls in status.GRPC_STATUS
        assert cls in HTTP_STATUS


def test_http_body__has_the_contract_shape_and_hides_internals() -> None:
    import json

    response = response_for(e.Internal("database exploded at line 42"))
    assert response.status == 500
    assert response.text is not None
    assert json.loads(response.text) == {"error": {"code": "internal", "message": "internal error"}}
    limited = response_for(e.RateLimited("slow down", retry_after_s=2.5))
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "3"


async def test_deadline__an_inbound_deadline_bounds_the_outbound_call() -> None:
    """A -> B over mt_core channels: B sees A's caller's deadline, not B's default timeout."""
    seen: list[float] = []

    async def inner(
        request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        seen.append(context.time_remaining())  # type: ignore[attr-defined]
        return health_pb2.HealthCheckResponse()

    def mount(name: str, handler: Any) -> Servicer:
        generic = grpc.method_handlers_generic_handler(
            name,
            {
                "Check": grpc.unary_unary_rpc_method_handler(
                    handler,
                    request_deserializer=health_pb2.HealthCheckRequest.FromString,
                    response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
                )
            },
        )
        return Servicer(name, lambda server: server.add_generic_rpc_handlers([generic]))

    def method(chan: grpc.aio.Channel, name: str) -> grpc.aio.UnaryUnaryMultiCallable:  # type: ignore[type-arg]
        return chan.unary_unary(
            f"/{name}/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )

    settings = ServiceSettings(service_name="test", grpc_port=0, shutdown_grace_ms=100)
    to_b: list[grpc.aio.Channel] = []

    async def outer(
        request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        return await method(to_b[0], "test.Inner")(request)

    async with (
        grpc_server(settings, [mount("test.Inner", inner)]) as b,
        grpc_server(settings, [mount("test.Outer", outer)]) as a,
        channel(f"127.0.0.1:{b.port}", default_timeout_ms=30_000) as b_chan,
        channel(f"127.0.0.1:{a.port}", default_timeout_ms=30_000) as a_chan,
    ):
        to_b.append(b_chan)
        await method(a_chan, "test.Outer")(health_pb2.HealthCheckRequest(), timeout=2.0)
    assert len(seen) == 1
    # Not the 30 s default: the 2 s deadline travelled (give or take clock rounding).
    assert 0 < seen[0] < 3, f"B had {seen[0]:.1f}s: the 2 s deadline was not propagated"


async def test_handler__runs_to_completion_when_its_caller_gives_up() -> None:
    """A handler is a sequence of writes: the caller's deadline must not cut it half-way."""
    steps: list[str] = []
    finished = asyncio.Event()

    async def slow(
        request: health_pb2.HealthCheckRequest, context: object
    ) -> health_pb2.HealthCheckResponse:
        steps.append("first write")
        await asyncio.sleep(0.5)  # the caller's 0.1 s deadline passes here
        steps.append("second write")
        finished.set()
        return health_pb2.HealthCheckResponse()

    generic = grpc.method_handlers_generic_handler(
        "test.Slow",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                slow,
                request_deserializer=health_pb2.HealthCheckRequest.FromString,
                response_serializer=health_pb2.HealthCheckResponse.SerializeToString,
            )
        },
    )
    servicer = Servicer("test.Slow", lambda server: server.add_generic_rpc_handlers([generic]))
    settings = ServiceSettings(service_name="test", grpc_port=0, shutdown_grace_ms=100)
    async with (
        grpc_server(settings, [servicer]) as server,
        channel(f"127.0.0.1:{server.port}", default_timeout_ms=30_000) as chan,
    ):
        call = chan.unary_unary(
            "/test.Slow/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as gave_up:
            await call(health_pb2.HealthCheckRequest(), timeout=0.1)
        assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(finished.wait(), 5)
    assert steps == ["first write", "second write"]
