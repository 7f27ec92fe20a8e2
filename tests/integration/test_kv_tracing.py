"""The KV store's SQL shows up in the trace of the write that caused it, and nowhere else."""

from __future__ import annotations

from pathlib import Path

from mt_kv.storage.store import Batch, LogRow, Store
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


async def test_store_commit__sql_spans_join_the_callers_trace_only(
    spans: InMemorySpanExporter, tmp_path: Path
) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path}/kv.sqlite")
    await store.open()
    try:
        spans.clear()
        await store.commit(Batch(log_appends=[LogRow(1, 1, 1, b"untraced")]))
        assert [s.name for s in spans.get_finished_spans()] == []  # no root spans of its own
        with trace.get_tracer("test").start_as_current_span("kv.persist") as parent:
            await store.commit(Batch(log_appends=[LogRow(1, 2, 1, b"traced")]))
        inserts = [s for s in spans.get_finished_spans() if s.name.startswith("INSERT")]
        assert inserts
        assert all(s.parent is not None for s in inserts)
        assert {s.parent.span_id for s in inserts if s.parent} == {
            parent.get_span_context().span_id
        }
    finally:
        await store.close()
