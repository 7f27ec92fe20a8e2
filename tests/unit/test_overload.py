"""Criticality travels with every call, and a saturated service refuses the lowest classes first."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2
from mt_core import criticality
from mt_core.criticality import Criticality
from mt_core.errors import Overloaded
from mt_core.overload import LevelController, ServiceAdmission
from mt_core.rpc.client import call, channel
from mt_core.rpc.server import Servicer, criticality_of, grpc_server
from mt_core.settings import ServiceSettings

A, S, D, C = Criticality.ASYNC, Criticality.SHEDDABLE, Criticality.DEFAULT, Criticality.CRITICAL


def windows(control: LevelController, lag_ms: float, n: int, start: float) -> float:
    """Samples every 20 ms at ``lag_ms`` until ``n`` more windows have closed; the clock."""
    now, target = start, control.windows + n
    while control.windows < target:
        now += 0.02
        control.observe_lag(lag_ms, now)
    return now


def test_level__refuses_one_more_class_per_overloaded_window_never_critical() -> None:
    control = LevelController(lag_target_ms=20)
    now = windows(control, 1.0, 2, 0.0)
    assert control.level is A
    assert control.admits(A)
    now = windows(control, 60.0, 1, now)
    assert control.level is S
    assert not control.admits(A)
    assert control.admits(S)
    now = windows(control, 60.0, 5, now)
    assert control.level is D
    assert not control.admits(S)
    assert control.admits(D)
    assert control.admits(C)


def test_level__comes_back_one_class_per_calm_window() -> None:
    control = LevelController(lag_target_ms=20)
    now = windows(control, 60.0, 5, 0.0)
    now = windows(control, 2.0, 1, now)
    assert control.level is S
    windows(control, 2.0, 1, now)
    assert control.level is A


def test_level__what_it_waits_on_counts_as_overload_too() -> None:
    control = LevelController(lag_target_ms=20)
    now = windows(control, 1.0, 1, 0.0)
    control.observe_pressure(1.5)  # e.g. the KV's commits at 1.5x their target
    windows(control, 1.0, 1, now)
    assert control.level is S


def test_service_admission__yields_only_to_someone() -> None:
    """A saturated service refuses the async class while the foreground calls it; busy with
    async work alone, it has nobody to yield to."""
    now = [0.0]
    admission = ServiceAdmission(LevelController(), clock=lambda: now[0])
    admission.controller.level = S
    assert admission.admits(A)  # no foreground seen
    assert admission.admits(D)
    assert not admission.admits(A)
    now[0] = 5.0  # the foreground has been gone a while
    assert admission.admits(A)


def test_criticality__parses_what_another_process_sent() -> None:
    assert Criticality.parse("sheddable") is S
    assert Criticality.parse("ASYNC") is A
    assert Criticality.parse("nonsense") is D
    assert Criticality.parse(None) is D


Handler = Callable[[health_pb2.HealthCheckRequest, Any], Awaitable[health_pb2.HealthCheckResponse]]


def _mount(name: str, handler: Handler) -> Servicer:
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


def _method(chan: grpc.aio.Channel, name: str) -> Any:
    return chan.unary_unary(
        f"/{name}/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )


SETTINGS = ServiceSettings(service_name="test", grpc_port=0, shutdown_grace_ms=100)


async def test_criticality__travels_from_the_edge_through_every_hop() -> None:
    """The gateway's class reaches B through A, which never sets it itself."""
    seen: list[Criticality] = []
    to_b: list[grpc.aio.Channel] = []

    async def inner(request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        seen.append(criticality_of(context))
        seen.append(criticality.current())
        return health_pb2.HealthCheckResponse()

    async def outer(request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        return await _method(to_b[0], "test.Inner")(request)

    async with (
        grpc_server(SETTINGS, [_mount("test.Inner", inner)]) as b,
        grpc_server(SETTINGS, [_mount("test.Outer", outer)]) as a,
        channel(f"127.0.0.1:{b.port}", default_timeout_ms=5_000) as b_chan,
        channel(f"127.0.0.1:{a.port}", default_timeout_ms=5_000) as a_chan,
    ):
        to_b.append(b_chan)
        with criticality.scope(S):
            await call(_method(a_chan, "test.Outer")(health_pb2.HealthCheckRequest()))
        await call(_method(a_chan, "test.Outer")(health_pb2.HealthCheckRequest()))
    assert seen == [S, S, D, D]


async def test_overloaded_service__refuses_the_async_class_and_serves_the_rest() -> None:
    served: list[Criticality] = []

    async def handler(request: health_pb2.HealthCheckRequest, context: Any) -> Any:
        served.append(criticality.current())
        return health_pb2.HealthCheckResponse()

    async with (
        grpc_server(SETTINGS, [_mount("test.Busy", handler)]) as server,
        channel(f"127.0.0.1:{server.port}", default_timeout_ms=5_000) as chan,
    ):
        await server.admission.stop()  # no window of the test's own makes it change
        server.admission.controller.level = S  # as after an overloaded window
        with criticality.scope(D):  # the foreground is calling
            await call(_method(chan, "test.Busy")(health_pb2.HealthCheckRequest()))
        with criticality.scope(A), pytest.raises(Overloaded) as refused:
            await call(_method(chan, "test.Busy")(health_pb2.HealthCheckRequest()))
        assert refused.value.retry_after_s > 0
        for cls in (S, D, C):
            with criticality.scope(cls):
                await call(_method(chan, "test.Busy")(health_pb2.HealthCheckRequest()))
    assert served == [D, S, D, C]
