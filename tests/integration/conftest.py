"""Integration tests talk to the real stack; spans of this test process go to memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mt_cli.kvcluster import KVCluster
from mt_core.telemetry import instrument_libraries
from mt_kv_client import KVClient
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


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KVCluster]:
    """A KV cluster of its own (manager and 3 replicas) for a test module."""
    kv = KVCluster(Path(tmp_path_factory.mktemp("kv")))
    try:
        await kv.start()
        yield kv
    finally:
        kv.stop()


@pytest.fixture
async def kv(cluster: KVCluster) -> AsyncIterator[KVClient]:
    async with KVClient(cluster.manager_addr) as client:
        yield client
