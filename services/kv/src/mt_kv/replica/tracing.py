"""Spans and metrics of the replica's I/O. Tracing and metrics wrap the rules; they do not live
inside them: the parts call these around what they do."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mt_proto import kv_pb2 as pb
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind
from prometheus_client import Gauge, Histogram

from mt_kv.replica.shard import Shard
from mt_kv.rules.log import SEQ, LogRec

TRACER = trace.get_tracer("mt_kv.replica")


def _open_span(traced: list[SpanContext], name: str, kind: SpanKind, **attrs: Any) -> Span | None:
    """A span for background work (a persist, an Append until its answer) in the trace of the
    first traced write it carries, linked to the others; None without any: an idle Append or
    an untraced write's persist starts no trace of its own (nor do its SQL statements)."""
    if not traced:
        return None
    parent = trace.set_span_in_context(NonRecordingSpan(traced[0]))
    links = [Link(c) for c in traced[1:33]]
    span = TRACER.start_span(name, parent, kind, links=links)
    span.set_attributes({f"mt.{k}": v for k, v in attrs.items()})
    span.set_attribute("mt.traced_writes", len(traced))
    return span


@dataclass(frozen=True, slots=True)
class _Part:
    """One shard's part of an Append in flight, to match its answer against."""

    shard: Shard
    epoch: int
    gen: int
    prev_seq: int


@dataclass(slots=True)
class _Note:
    """What a primary remembers of an Append in flight."""

    parts: list[_Part]
    span: Span | None = None


def _traced_in(shard: Shard, entries: Sequence[LogRec]) -> list[SpanContext]:
    """The traced writes among ``entries`` (their span contexts)."""
    return [shard.traced[e[SEQ]] for e in entries if e[SEQ] in shard.traced]


COMMIT_SECONDS = Histogram(
    "kv_commit_seconds",
    "From sequencing a write to its commit (majority durable), by shard (primary side)",
    ["shard"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REPLICATION_LAG = Gauge(
    "kv_replication_lag_entries",
    "Log entries a follower has not yet acknowledged as durable, by shard and follower",
    ["shard", "follower"],
)
KEYSPACE_LOAD = Gauge(
    "kv_keyspace_keys_per_second",
    "Keys asked of this replica as a primary per second, by keyspace: offered (refused "
    "included) and refused over the keyspace's quota",
    ["keyspace", "kind"],
)
QUOTA_SHARE = Gauge(
    "kv_quota_share_keys_per_second",
    "This replica's share of a keyspace's quota (keys per second)",
    ["keyspace"],
)


def observe_quotas(load: Sequence[pb.KeyspaceLoad], shares: Mapping[str, float]) -> None:
    """The load a heartbeat reports and the shares its answer set, as metrics."""
    for entry in load:
        KEYSPACE_LOAD.labels(entry.keyspace, "offered").set(entry.offered_per_s)
        KEYSPACE_LOAD.labels(entry.keyspace, "refused").set(entry.refused_per_s)
    QUOTA_SHARE.clear()  # (a quota removed leaves no share behind)
    for keyspace, rate in shares.items():
        QUOTA_SHARE.labels(keyspace).set(rate)
