"""The shard manager's view as Prometheus metrics — what ``kv status`` shows: each shard's epoch
and primary, each replica's copies, primaries, load and state, the moves and splits under way,
failovers, and the quotas' use. Read from the manager's ``status()`` by its watch loop (about
once a second): the manager's rules keep no metrics of their own.
"""

from __future__ import annotations

from collections.abc import Iterable

from mt_proto import kv_pb2 as pb
from prometheus_client import Counter, Gauge

SHARD_EPOCH = Gauge("kv_shard_epoch", "Each shard's epoch", ["shard"])
SHARD_PRIMARY = Gauge(
    "kv_shard_primary",
    "1 for the replica leading each shard (none while it has no primary)",
    ["shard", "replica"],
)
REPLICA_COPIES = Gauge("kv_replica_copies", "Voting shard copies each replica holds", ["replica"])
REPLICA_PRIMARIES = Gauge("kv_replica_primaries", "Shards each replica leads", ["replica"])
REPLICA_ALIVE = Gauge("kv_replica_alive", "1 while the manager hears from a replica", ["replica"])
REPLICA_DRAINING = Gauge(
    "kv_replica_draining", "1 while a replica's copies move away (drain)", ["replica"]
)
REPLICA_LOAD = Gauge(
    "kv_replica_keys_per_second",
    "Keys asked of each replica as a primary per second (its last load report)",
    ["replica"],
)
IN_PROGRESS = Gauge(
    "kv_moves_in_progress",
    "Changes under way: μshard moves, shard copies moving between replicas, splits",
    ["kind"],
)
FAILOVERS = Counter(
    "kv_failovers_total", "Shards whose lost primary was replaced by an election", ["shard"]
)
QUOTA_USED_BYTES = Gauge(
    "kv_quota_used_bytes", "Bytes stored in each keyspace with a quota", ["keyspace"]
)
QUOTA_FULL = Gauge("kv_quota_full", "1 while a keyspace is at its quota of bytes", ["keyspace"])


class Exporter:
    """Sets the metrics from a status; counts each failover once (those already in the
    manager's saved history at its start are not counted again)."""

    def __init__(self) -> None:
        self._failovers_upto_ms: int | None = None
        self._labels: dict[Gauge, set[tuple[str, ...]]] = {}

    def export(self, status: pb.StatusResponse) -> None:
        self._set(SHARD_EPOCH, {(str(s.id),): s.epoch for s in status.shards})
        self._set(SHARD_PRIMARY, {(str(s.id), s.primary): 1 for s in status.shards if s.primary})
        replicas = status.replicas
        self._set(REPLICA_COPIES, {(r.id,): r.shards for r in replicas})
        self._set(REPLICA_PRIMARIES, {(r.id,): r.primaries for r in replicas})
        self._set(REPLICA_ALIVE, {(r.id,): int(r.alive) for r in replicas})
        self._set(REPLICA_DRAINING, {(r.id,): int(r.state == "draining") for r in replicas})
        self._set(REPLICA_LOAD, {(r.id,): r.ops_per_s for r in replicas})
        moving = sum(m.step not in ("done", "abandoned") for m in status.reconfigs)
        self._set(
            IN_PROGRESS,
            {
                ("microshard",): sum(m.step != "done" for m in status.moves),
                ("replica",): moving,
                ("split",): len(status.splits),
            },
        )
        self._set(QUOTA_USED_BYTES, {(q.keyspace,): q.used_bytes for q in status.quotas})
        self._set(QUOTA_FULL, {(q.keyspace,): int(q.full) for q in status.quotas})
        self._count_failovers(status.failovers)

    def _set(self, gauge: Gauge, values: dict[tuple[str, ...], float]) -> None:
        """Set each labelled value; remove those gone since (a scrape in between sees either)."""
        for labels, value in values.items():
            gauge.labels(*labels).set(value)
        for gone in self._labels.get(gauge, set()) - set(values):
            gauge.remove(*gone)
        self._labels[gauge] = set(values)

    def _count_failovers(self, failovers: Iterable[pb.Failover]) -> None:
        records = list(failovers)
        newest = max((f.at_ms for f in records), default=0)
        if self._failovers_upto_ms is not None:
            for f in records:
                if f.at_ms > self._failovers_upto_ms:
                    FAILOVERS.labels(str(f.shard)).inc()
        self._failovers_upto_ms = max(newest, self._failovers_upto_ms or 0)
