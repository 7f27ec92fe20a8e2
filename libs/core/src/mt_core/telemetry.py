"""OpenTelemetry bootstrap: one tracer provider per process, the library instrumentations on.

The exporter follows the standard variables: ``OTEL_TRACES_EXPORTER`` (``zipkin`` by default,
``otlp``, ``console`` or ``none``), ``OTEL_EXPORTER_ZIPKIN_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*`` and
``OTEL_RESOURCE_ATTRIBUTES``. ``service.name`` is the service's folder name.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind

log = logging.getLogger(__name__)

_instrumented = False


def make_exporter(kind: str) -> SpanExporter | None:
    """The span exporter named by ``OTEL_TRACES_EXPORTER`` (first of a comma list)."""
    kind = kind.split(",")[0].strip().lower()
    if kind in ("", "zipkin"):
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter()  # reads OTEL_EXPORTER_ZIPKIN_ENDPOINT
    if kind == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if kind == "console":
        return ConsoleSpanExporter()
    if kind == "none":
        return None
    raise ValueError(f"unknown OTEL_TRACES_EXPORTER {kind!r} (zipkin, otlp, console or none)")


# Health probes and KV heartbeats run many times a second; tracing them would bury the real
# traffic. (KV replication does not go through gRPC; it makes its own spans, in the traces of
# the writes it carries.)
_UNTRACED_SERVICES = frozenset({"grpc.health.v1.Health"})
_UNTRACED_METHODS = frozenset({"Heartbeat"})


@functools.cache
def _traced_method(method: str | bytes) -> bool:
    """Whether calls of ``method`` ("/package.Service/Method") get spans; decided once per
    method (the instrumentation's composed filters re-parsed the name on every call)."""
    name = method.decode() if isinstance(method, bytes) else method
    service, _, rpc = name.lstrip("/").rpartition("/")
    return service not in _UNTRACED_SERVICES and rpc not in _UNTRACED_METHODS


@contextmanager
def outbound(method: str) -> Iterator[list[tuple[str, str]] | None]:
    """A gRPC call made inside a sampled trace: a CLIENT span around it, and the metadata that
    carries the trace to the callee. Outside one, nothing at all — no span, no propagation,
    and the callee skips its own (:func:`_server_filter`): an unsampled request pays nothing
    for tracing past the edge. (The instrumentation's client interceptor did the same work on
    every call, and grpc.aio runs any interceptor in a task of its own.)"""
    if not trace.get_current_span().get_span_context().trace_flags.sampled:
        yield None
        return
    name = method.lstrip("/")
    service, _, rpc = name.rpartition("/")
    attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": rpc}
    with trace.get_tracer(__name__).start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield list(carrier.items())


def _server_filter(trace_roots: bool) -> Callable[[Any], bool]:
    """Which inbound calls the server instrumentation wraps in a span. A process that starts
    no traces of its own only wraps calls that arrive inside a trace (with a traceparent),
    and skips the span machinery entirely for the rest."""

    def traced(details: Any) -> bool:
        if not _traced_method(details.method):
            return False
        return trace_roots or any(k == "traceparent" for k, _ in details.invocation_metadata or ())

    return traced


def instrument_libraries(trace_roots: bool = True) -> None:
    """Turn on the instrumentations of the libraries we use; once per process."""
    global _instrumented
    if _instrumented:
        return
    from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
    from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
    from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
    from opentelemetry.instrumentation.redis import RedisInstrumentor
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    server = GrpcAioInstrumentorServer(filter_=_server_filter(trace_roots))  # type: ignore[no-untyped-call]
    server.instrument()
    AioHttpClientInstrumentor().instrument()
    RedisInstrumentor().instrument()
    AIOKafkaInstrumentor().instrument()
    SQLAlchemyInstrumentor().instrument()
    _instrumented = True


class NamedRoots(Sampler):
    """Samples a root span only if its name is one of ``names`` (the rare events of a process
    that otherwise only records spans inside its callers' traces)."""

    def __init__(self, names: frozenset[str]) -> None:
        self._names = names

    def should_sample(
        self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if name in self._names else Decision.DROP
        return SamplingResult(decision)

    def get_description(self) -> str:
        return f"NamedRoots{{{','.join(sorted(self._names))}}}"


def sampler(trace_roots: bool, root_names: str, ratio: float = 1.0) -> Sampler | None:
    """The sampler for a process: None (the SDK's) when OTEL_TRACES_SAMPLER is set; otherwise
    spans inside a sampled caller's trace, and — in a process that starts traces of its own —
    the share ``ratio`` of new traces (by trace id, so every process agrees on a trace), or —
    in infrastructure — only the named root spans."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None
    if trace_roots:
        return ParentBased(root=TraceIdRatioBased(ratio))
    names = frozenset(n.strip() for n in root_names.split(",") if n.strip())
    return ParentBased(root=NamedRoots(names))


@contextmanager
def telemetry(
    service_name: str,
    enabled: bool = True,
    trace_roots: bool = True,
    root_names: str = "",
    sample_ratio: float = 1.0,
) -> Iterator[TracerProvider]:
    """Install the global tracer provider for this process; flush and shut it down on exit.
    A process with ``trace_roots`` starts a trace for ``sample_ratio`` of the requests that
    arrive without one; without, it records spans only inside its callers' traces and root
    spans named in ``root_names`` (see :func:`sampler`)."""
    resource = Resource.create({SERVICE_NAME: service_name})
    if os.environ.get("OTEL_SERVICE_NAME"):
        # We own service.name: it is the folder name, whatever the environment says.
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(
        resource=resource, sampler=sampler(trace_roots, root_names, sample_ratio)
    )
    exporter = make_exporter(os.environ.get("OTEL_TRACES_EXPORTER", "zipkin")) if enabled else None
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    instrument_libraries(trace_roots)
    log.debug("telemetry on", extra={"exporter": type(exporter).__name__})
    try:
        yield provider
    finally:
        provider.force_flush(timeout_millis=2_000)
        provider.shutdown()


def annotate(**attributes: str | int | bool) -> None:
    """Set attributes on the current span (user id, post id, shard...), if one is recording."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"mt.{k}": v for k, v in attributes.items()})


@contextmanager
def untraced() -> Iterator[None]:
    """No spans for the calls in the block: background polls several times a second would
    bury the real traffic (and cost more to record than to make)."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def event(name: str, **attributes: str | int | bool | float) -> None:
    """A span event on the current span: a retry, a failover, a shed request."""
    span = trace.get_current_span()
    if span.is_recording():
        span.add_event(name, attributes)
