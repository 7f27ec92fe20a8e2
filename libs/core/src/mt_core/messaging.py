"""Kafka producer and consumer lifetimes, with trace context carried in message headers.

The aiokafka instrumentation (switched on by :mod:`mt_core.telemetry`) writes the W3C
``traceparent`` header on every send and starts a consumer span from it on receive; a handler
that does more work for a record opens its span under :func:`context_of` so the trace goes on
from the producer through the queue to the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from opentelemetry import context as otel_context
from opentelemetry import propagate

Headers = Sequence[tuple[str, bytes]]


@asynccontextmanager
async def kafka_producer(bootstrap: str, client_id: str) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent, all-replicas-acknowledged producer for the block's lifetime."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,  # small batches: latency matters more than throughput for events
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@asynccontextmanager
async def kafka_consumer(
    bootstrap: str, group_id: str, topics: Sequence[str], *, client_id: str
) -> AsyncIterator[AIOKafkaConsumer]:
    """A consumer in ``group_id`` that commits only when told to (at-least-once)."""
    consumer = AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        # A fetch waits for a few messages (or 50 ms) rather than returning each one alone: at
        # a job per request, a fetch per message cost the broker more than the message did.
        fetch_min_bytes=16 * 1024,
        fetch_max_wait_ms=50,
    )
    await consumer.start()
    try:
        yield consumer
    finally:
        await consumer.stop()


def _carrier(headers: Headers | None) -> dict[str, str]:
    return {key: value.decode("latin-1") for key, value in headers or ()}


def context_of(record: ConsumerRecord[object, object]) -> otel_context.Context:
    """The trace context the producer put in ``record``'s headers (empty if none)."""
    return propagate.extract(_carrier(record.headers))


def inject_headers(headers: Headers | None = None) -> list[tuple[str, bytes]]:
    """The current trace context as Kafka headers, for producers that bypass the instrumentation
    (e.g. an outbox relay publishing on behalf of an earlier request)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    existing = list(headers or ())
    names = {key for key, _ in existing}
    return existing + [(k, v.encode("latin-1")) for k, v in carrier.items() if k not in names]
