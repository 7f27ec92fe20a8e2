"""Settings from the environment, JSON logs with trace ids, deadlines, exporter choice."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time

import pytest
from mt_core.logging import setup_logging
from mt_core.rpc import deadline
from mt_core.settings import ServiceSettings
from mt_core.telemetry import make_exporter
from mt_gateway.settings import Settings as GatewaySettings
from mt_users.settings import Settings as UsersSettings
from opentelemetry.sdk.trace import TracerProvider


def test_settings__read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MT_GRPC_PORT", "6001")
    monkeypatch.setenv("MT_KV_ADDR", "kv:50060")
    monkeypatch.setenv("MT_SHUTDOWN_GRACE_MS", "250")
    settings = UsersSettings()
    assert settings.service_name == "users"
    assert settings.grpc_port == 6001
    assert settings.kv_addr == "kv:50060"
    assert settings.shutdown_grace_ms == 250


def test_settings__reject_a_malformed_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MT_HTTP_PORT", "eighty")
    with pytest.raises(ValueError, match="http_port"):
        GatewaySettings()


def test_settings__are_immutable() -> None:
    settings = ServiceSettings()
    with pytest.raises(ValueError, match="frozen"):
        settings.grpc_port = 1  # type: ignore[misc]


def test_logs__are_json_lines_with_the_trace_id(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("users", "INFO", json=True)
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("work") as span:
        logging.getLogger("t").info("hello", extra={"user_id": "42"})
        trace_id = format(span.get_span_context().trace_id, "032x")
    logging.getLogger("t").info("outside")
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["message"] == "hello"
    assert lines[0]["trace_id"] == trace_id
    assert lines[0]["service"] == "users"
    assert lines[0]["user_id"] == "42"
    assert lines[1]["trace_id"] is None
    logging.getLogger().handlers[:] = [logging.StreamHandler(io.StringIO())]


async def test_deadline__outbound_timeout_is_cut_to_what_the_caller_has_left() -> None:
    assert deadline.effective_timeout_s(5.0) == 5.0
    token = deadline.set_remaining(0.5)
    try:
        await asyncio.sleep(0.1)
        left = deadline.effective_timeout_s(5.0)
        assert left is not None
        assert 0.3 < left < 0.45
        assert deadline.effective_timeout_s(0.05) == 0.05
    finally:
        deadline.reset(token)
    assert deadline.remaining_s() is None


def test_exporter__follows_otel_traces_exporter() -> None:
    assert type(make_exporter("zipkin")).__name__ == "ZipkinExporter"
    assert type(make_exporter("")).__name__ == "ZipkinExporter"
    assert type(make_exporter("otlp")).__name__ == "OTLPSpanExporter"
    assert make_exporter("none") is None
    with pytest.raises(ValueError, match="jaeger-thrift"):
        make_exporter("jaeger-thrift")


def test_inject_headers__carries_the_current_trace_without_duplicating() -> None:
    from mt_core.messaging import inject_headers

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("publish") as span:
        trace_id = format(span.get_span_context().trace_id, "032x")
        headers = inject_headers([("kind", b"follow")])
        again = inject_headers(headers)
    assert headers[0] == ("kind", b"follow")
    assert trace_id in dict(headers)["traceparent"].decode()
    assert [k for k, _ in again].count("traceparent") == 1
    assert inject_headers() == []  # no current span: nothing to carry


def test_sampler__infrastructure_records_only_callers_traces_and_named_roots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mt_core.telemetry import sampler
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    tracer = TracerProvider(sampler=sampler(False, "kv.promote")).get_tracer("t")
    assert not tracer.start_span("kv.write").is_recording()  # no caller: no trace
    assert tracer.start_span("kv.promote").is_recording()  # a named root: traced
    caller = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    inside = trace.set_span_in_context(NonRecordingSpan(caller))
    assert tracer.start_span("kv.write", context=inside).is_recording()
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    assert sampler(False, "kv.promote") is None  # the standard variable wins


def test_sampler__a_service_starts_the_ratio_of_traces_and_continues_sampled_callers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mt_core.telemetry import sampler
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    monkeypatch.delenv("OTEL_TRACES_SAMPLER", raising=False)
    tracer = TracerProvider(sampler=sampler(True, "", 0.1)).get_tracer("t")
    started = sum(tracer.start_span("GET /v1/feed").is_recording() for _ in range(5000))
    assert 350 < started < 650  # about a tenth
    sampled = SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    unsampled = SpanContext(1, 3, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    for _ in range(100):
        inside = trace.set_span_in_context(NonRecordingSpan(sampled))
        assert tracer.start_span("RPC", context=inside).is_recording()
        outside = trace.set_span_in_context(NonRecordingSpan(unsampled))
        assert not tracer.start_span("RPC", context=outside).is_recording()
    everything = TracerProvider(sampler=sampler(True, "", 1.0)).get_tracer("t")
    assert all(everything.start_span("x").is_recording() for _ in range(100))


def test_outbound__carries_a_sampled_trace_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mt_core.telemetry import outbound
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("t")

    def unsampled() -> trace.Span:
        context = SpanContext(1, 2, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT))
        return NonRecordingSpan(context)

    with trace.use_span(unsampled()), outbound("/mt.kv.KV/BatchWrite") as metadata:
        assert metadata is None  # no span, nothing carried: the callee traces nothing either
    with outbound("/mt.kv.KV/BatchWrite") as metadata:
        assert metadata is None  # outside any trace
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    with tracer.start_as_current_span("request") as request:
        trace_id = request.get_span_context().trace_id
        with outbound("/mt.kv.KV/BatchWrite") as metadata:
            assert metadata is not None
            (name, value), *_ = metadata
            assert name == "traceparent"
            assert f"{trace_id:032x}" in value
    assert [s.name for s in spans.get_finished_spans()] == ["mt.kv.KV/BatchWrite", "request"]


def test_grpc_server_filter__skips_probes_heartbeats_and_calls_without_a_trace() -> None:
    from types import SimpleNamespace

    from mt_core.telemetry import _server_filter

    def call(method: str, *metadata: tuple[str, str]) -> SimpleNamespace:
        return SimpleNamespace(method=method, invocation_metadata=metadata)

    service, infra = _server_filter(True), _server_filter(False)
    assert service(call("/mt.users.Users/Signup"))
    assert not service(call("/mt.kv.ShardManager/Heartbeat", ("traceparent", "00-...")))
    assert not infra(call("/mt.kv.KV/BatchWrite"))  # no caller's trace: no span machinery
    assert infra(call("/mt.kv.KV/BatchWrite", ("traceparent", "00-...")))


async def test_loop_watch__a_stalled_loop_is_measured_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from mt_core.service import LOOP_LAG, watching_loop

    def stalls_past(seconds: float) -> float:
        return sum(
            s.value
            for m in LOOP_LAG.collect()
            for s in m.samples
            if s.name.endswith("_bucket") and s.labels["le"] == "+Inf"
        ) - sum(
            s.value
            for m in LOOP_LAG.collect()
            for s in m.samples
            if s.name.endswith("_bucket") and s.labels["le"] == str(seconds)
        )

    before = stalls_past(0.1)
    with caplog.at_level(logging.WARNING, logger="mt_core.service"):
        async with watching_loop(0.1):
            await asyncio.sleep(0.06)  # the timer is armed
            time.sleep(0.25)  # noqa: ASYNC251 - the stall under test
            await asyncio.sleep(0.06)
    assert stalls_past(0.1) == before + 1
    [record] = caplog.records
    assert record.msg == "event loop stalled"
    # Asleep, neither working nor waiting for a CPU: the kernel's counts say which.
    stall_ms = getattr(record, "stall_ms")  # noqa: B009
    assert getattr(record, "waiting_for_cpu_ms") < stall_ms / 2  # noqa: B009
    assert getattr(record, "on_cpu_ms") < stall_ms / 2  # noqa: B009
    assert getattr(record, "gc_ms") == 0  # noqa: B009


async def test_loop_watch__a_busy_stall_is_told_from_a_sleeping_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import gc

    from mt_core.service import LOOP_TICK_S, _time_collections, watching_loop

    hook = _time_collections()
    gc.callbacks.append(hook)
    try:
        with caplog.at_level(logging.WARNING, logger="mt_core.service"):
            async with watching_loop(0.1):
                await asyncio.sleep(0.06)
                until = time.perf_counter() + 0.25
                while time.perf_counter() < until:  # work on the loop, a collection among it
                    gc.collect()
                await asyncio.sleep(0.06)
    finally:
        gc.callbacks.remove(hook)
    [record] = caplog.records
    stall_ms = getattr(record, "stall_ms")  # noqa: B009
    # Busy: on a CPU, or runnable and waiting for one on a crowded box; never asleep.
    busy_ms = getattr(record, "on_cpu_ms") + getattr(record, "waiting_for_cpu_ms")  # noqa: B009
    assert busy_ms > stall_ms / 2
    # Counted over the timer's whole interval: its tick and the stall.
    assert 0 < getattr(record, "gc_ms") <= stall_ms + LOOP_TICK_S * 1000 + 1  # noqa: B009
