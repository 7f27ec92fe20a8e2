"""The real broker: produce and consume through our helpers, with the trace carried across."""

from __future__ import annotations

import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from mt_core.messaging import context_of, kafka_consumer, kafka_producer
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

pytestmark = pytest.mark.usefixtures("stack")

BOOTSTRAP = "127.0.0.1:9092"


async def _create_topic(name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def test_kafka__consumer_continues_the_producers_trace(spans: InMemorySpanExporter) -> None:
    topic = f"test-trace-{uuid.uuid4().hex[:8]}"
    await _create_topic(topic)
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("user-action") as action:
        trace_id = action.get_span_context().trace_id
        async with kafka_producer(BOOTSTRAP, "tests") as producer:
            await producer.send_and_wait(topic, b"hello", key=b"k1")

    async with kafka_consumer(BOOTSTRAP, f"g-{topic}", [topic], client_id="tests") as consumer:
        record = await consumer.getone()
        with tracer.start_as_current_span("handle", context=context_of(record)) as handle:
            assert handle.get_span_context().trace_id == trace_id
        await consumer.commit()

    assert record.value == b"hello"
    headers = dict(record.headers)
    assert f"{trace_id:032x}" in headers["traceparent"].decode()
    finished = spans.get_finished_spans()
    kinds = {s.kind for s in finished if s.context.trace_id == trace_id}
    assert SpanKind.PRODUCER in kinds
    assert SpanKind.CONSUMER in kinds, "the instrumentation recorded no consumer span"
