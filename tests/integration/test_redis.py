"""The real Redis of the stack, through the client the services use, traced."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

pytestmark = pytest.mark.usefixtures("stack")


async def test_redis__round_trips_and_records_a_client_span(spans: InMemorySpanExporter) -> None:
    key = f"test:{uuid.uuid4().hex}"
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        assert await redis.set(key, b"v", ex=30)
        assert await redis.get(key) == b"v"
        assert await redis.incr(f"{key}:n") == 1
        await redis.delete(key, f"{key}:n")
    finally:
        await redis.aclose()
    names = [s.name for s in spans.get_finished_spans()]
    assert "SET" in names
    assert "GET" in names
