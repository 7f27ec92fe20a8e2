"""The shard manager's metrics say what ``kv status`` says: shards' epochs and primaries,
replicas' copies and primaries, changes under way, failovers (each counted once), quotas."""

from __future__ import annotations

from mt_kv.manager.metrics import Exporter
from mt_proto import kv_pb2 as pb
from prometheus_client import REGISTRY


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _status(primary: str, failovers: list[pb.Failover]) -> pb.StatusResponse:
    return pb.StatusResponse(
        shards=[pb.ShardInfo(id=70, epoch=4, primary=primary, replicas=["m-1", "m-2", "m-3"])],
        replicas=[
            pb.ReplicaInfo(id="m-1", alive=True, shards=1, primaries=int(primary == "m-1")),
            pb.ReplicaInfo(id="m-2", alive=False, state="draining", shards=1),
        ],
        failovers=failovers,
        moves=[pb.MicroshardMove(microshard=1, step="copy"), pb.MicroshardMove(step="done")],
        splits=[pb.Split(shard=70, new_shard=71)],
        quotas=[pb.QuotaUse(keyspace="mq", bytes=100, used_bytes=120, full=True)],
    )


def test_metrics__follow_the_status_and_count_each_failover_once() -> None:
    exporter = Exporter()
    old = pb.Failover(shard=70, epoch=3, at_ms=1_000)
    exporter.export(_status("m-1", [old]))  # already in the saved history: not counted
    assert _value("kv_shard_epoch", shard="70") == 4
    assert _value("kv_shard_primary", shard="70", replica="m-1") == 1
    assert _value("kv_replica_primaries", replica="m-1") == 1
    assert _value("kv_replica_alive", replica="m-2") == 0
    assert _value("kv_replica_draining", replica="m-2") == 1
    assert _value("kv_moves_in_progress", kind="microshard") == 1
    assert _value("kv_moves_in_progress", kind="split") == 1
    assert _value("kv_quota_full", keyspace="mq") == 1
    assert _value("kv_quota_used_bytes", keyspace="mq") == 120
    before = _value("kv_failovers_total", shard="70") or 0.0

    new = pb.Failover(shard=70, epoch=5, at_ms=2_000)
    exporter.export(_status("m-3", [old, new]))
    exporter.export(_status("m-3", [old, new]))  # seen: not again
    assert _value("kv_failovers_total", shard="70") == before + 1
    assert _value("kv_shard_primary", shard="70", replica="m-1") is None  # moved on
    assert _value("kv_shard_primary", shard="70", replica="m-3") == 1
