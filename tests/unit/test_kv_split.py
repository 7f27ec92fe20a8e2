"""A shard split at the shard manager: the new shard's voters, which μshards it takes, one
at a time once it has a primary, and all of it kept across a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from mt_kv.manager.core import ShardManager
from mt_proto import kv_pb2 as pb

REPLICAS = {"kv-1": "a:1", "kv-2": "a:2", "kv-3": "a:3", "kv-4": "a:4"}


class Clock:
    t = 100.0

    def __call__(self) -> float:
        return self.t


def _manager(path: Path, clock: Clock) -> ShardManager:
    return ShardManager(REPLICAS, 4, 32, path, failover_timeout_ms=1500, lease_ms=1000, clock=clock)


def _beat(manager: ShardManager, rid: str) -> None:
    progress = [
        pb.ShardProgress(shard=s.id, epoch=s.epoch, primary=s.primary == rid)
        for s in manager.shards
        if rid in s.replicas
    ]
    manager.heartbeat(pb.HeartbeatRequest(replica_id=rid, addr=REPLICAS[rid], shards=progress))


def test_split__new_shard_takes_every_other_microshard_once_it_has_a_primary(
    tmp_path: Path,
) -> None:
    clock = Clock()
    manager = _manager(tmp_path / "m.json", clock)
    for rid in REPLICAS:
        _beat(manager, rid)
    split = manager.split(1)
    assert split.new_shard == 4
    assert list(split.remaining) == [5, 13, 21, 29]  # of 1, 5, 9, ... 29 (μshard % 4 == 1)
    assert len(manager.shards[4].replicas) == 3
    assert "kv-4" in manager.shards[4].replicas  # the replica holding the fewest copies
    assert manager.next_split_move() is None  # no primary yet
    with pytest.raises(ValueError, match="being split"):
        manager.split(1)

    for _ in range(40):  # heartbeats until the new shard has elected a primary
        clock.t += 0.1
        for rid in REPLICAS:
            _beat(manager, rid)
    assert manager.shards[4].primary
    assert manager.next_split_move() == (5, 4)
    manager.mapping[5] = 4  # (the Mover's flip)
    manager.split_moved(5, 4)
    manager.mapping[13] = 4  # moved there otherwise (placement by load): skipped
    assert manager.next_split_move() == (21, 4)
    manager.save()  # (the Mover saves after every step)

    again = _manager(tmp_path / "m.json", clock)  # restarted: the split goes on
    assert len(again.shards) == 5
    assert again.shards[4].replicas == manager.shards[4].replicas
    assert [s.remaining for s in again.status().splits] == [[21, 29]]
    assert again.mapping[5] == 4


def test_split__refused_when_nothing_to_split(tmp_path: Path) -> None:
    manager = _manager(tmp_path / "m.json", Clock())
    with pytest.raises(ValueError, match="no shard"):
        manager.split(9)
    manager.mapping = [0] * 32  # every μshard on shard 0: shard 1 holds none
    with pytest.raises(ValueError, match="nothing to split"):
        manager.split(1)
