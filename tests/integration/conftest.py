"""Integration tests talk to the real stack; spans of this test process go to memory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mt_core.telemetry import instrument_libraries
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

_EXPORTER = InMemorySpanExporter()


@pytest.fixture(scope="session")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every span this test process records, with the library instrumentations switched on."""
    provider = TracerProvider(resource=Resource.create({"service.name": "tests"}))
    provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
    trace.set_tracer_provider(provider)
    instrument_libraries()
    yield _EXPORTER
    provider.shutdown()
