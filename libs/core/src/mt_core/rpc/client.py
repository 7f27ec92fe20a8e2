"""gRPC client channels: deadline and criticality propagated, our errors rebuilt from statuses.

``channel(addr, settings)`` returns a channel whose calls get the caller's remaining deadline
(or the default timeout) and carry the caller's criticality class in their metadata, and
:func:`call` turns a failed call into our error classes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from grpc.aio import _channel as grpc_aio_channel  # the factory before instrumentation

from mt_core import criticality
from mt_core.rpc import deadline
from mt_core.rpc.server import MAX_MESSAGE_BYTES
from mt_core.rpc.status import error_from_rpc
from mt_core.telemetry import outbound

T = TypeVar("T")


# The metadata entry of each class, made once: the hot path only picks one.
_CLASS_METADATA = {c: (criticality.METADATA_KEY, c.label) for c in criticality.Criticality}


class CallContextInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    """Gives each unary call min(its timeout or the default, the inbound call's remainder),
    the criticality class of the work it is done for, and — inside a sampled trace — a client
    span and the trace (:func:`mt_core.telemetry.outbound`)."""

    def __init__(self, default_timeout_s: float) -> None:
        self._default_s = default_timeout_s

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        own = (
            client_call_details.timeout
            if client_call_details.timeout is not None
            else self._default_s
        )
        method: Any = client_call_details.method  # str, though some grpc versions give bytes
        with outbound(method.decode() if isinstance(method, bytes) else method) as traced:
            metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), *(traced or ()))
            metadata.add(*_CLASS_METADATA[criticality.current()])
            details = grpc.aio.ClientCallDetails(
                method=method,
                timeout=deadline.effective_timeout_s(own),
                metadata=metadata,
                credentials=client_call_details.credentials,
                wait_for_ready=client_call_details.wait_for_ready,
            )
            call = await continuation(details, request)
            if traced is not None:
                await call.code()  # the span lasts until the call ends
            return call


# Reconnect at least every second: gRPC's default backoff grows to two minutes, so a client that
# saw a peer down while it restarted kept failing fast for seconds after it was back (a KV
# replica restarted under the client: reads gave up while its channel was still backing off).
RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
]


def channel(addr: str, default_timeout_ms: int) -> grpc.aio.Channel:
    """An insecure channel to ``addr`` (loopback or the compose network) with our interceptors."""
    return grpc_aio_channel.insecure_channel(  # type: ignore[return-value]  # the stubs split Channel in two
        addr,
        interceptors=[CallContextInterceptor(default_timeout_ms / 1000)],  # type: ignore[list-item]
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.keepalive_time_ms", 30_000),
            *RECONNECT_OPTIONS,
        ],
    )


def untraced_channel(addr: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel without the tracing instrumentation's interceptors (made from grpc's own
    factory, which the instrumentation replaces on the package). For a hot stream whose spans
    its user makes itself, such as the KV's replication: with any interceptor, grpc.aio feeds
    each streamed message through an extra queue and task."""
    made: grpc.aio.Channel = grpc_aio_channel.insecure_channel(  # type: ignore[assignment]  # the stubs split Channel in two
        addr, options=[*RECONNECT_OPTIONS, *options]
    )
    return made


async def call(awaitable: Awaitable[T]) -> T:
    """Await a gRPC call, raising our error class instead of ``AioRpcError`` on failure."""
    try:
        return await awaitable
    except grpc.aio.AioRpcError as err:
        raise error_from_rpc(err) from None
