"""The shard manager's rules, driven with heartbeats (no processes): fence, then elect the
most up-to-date of a fenced majority; never elect without a majority; replace a restarted
primary; rebalance one primary at a time."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mt_kv.manager.core import HANDOVER_TIMEOUT_S, Move, ShardManager
from mt_proto import kv_pb2 as pb

REPLICAS = {"kv-1": "a:1", "kv-2": "a:2", "kv-3": "a:3"}


def manager(tmp_path: Path, shards: int = 1) -> ShardManager:
    m = ShardManager(
        REPLICAS, shards, 64, tmp_path / "m.json", failover_timeout_ms=300, lease_ms=200
    )
    m._started -= 10
    return m


def beat(
    m: ShardManager,
    rid: str,
    *,
    epoch: int,
    last: tuple[int, int] = (0, 0),
    primary: bool = False,
    incarnation: int = 0,
) -> pb.HeartbeatResponse:
    progress = [
        pb.ShardProgress(
            shard=s.id, epoch=epoch, last_epoch=last[0], last_seq=last[1], primary=primary
        )
        for s in m.shards
    ]
    request = pb.HeartbeatRequest(replica_id=rid, shards=progress, incarnation=incarnation)
    return m.heartbeat(request)


def test_first_start__fences_epoch_1_then_elects_once_all_report(tmp_path: Path) -> None:
    m = manager(tmp_path)
    for rid in REPLICAS:
        beat(m, rid, epoch=0)
    assert (m.shards[0].epoch, m.shards[0].primary) == (1, "")  # fenced, nobody elected yet
    for rid in REPLICAS:
        beat(m, rid, epoch=1)
    assert m.shards[0].primary == "kv-1"  # shard 0's preferred replica, on a tie


def test_election__picks_the_most_up_to_date_log_of_the_fenced(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 3, ""
    beat(m, "kv-1", epoch=3, last=(2, 40))
    beat(m, "kv-2", epoch=3, last=(3, 7))  # a later epoch beats a longer log
    beat(m, "kv-3", epoch=3, last=(2, 90))
    assert m.shards[0].primary == "kv-2"


def test_election__never_without_a_fenced_majority(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 3, ""
    beat(m, "kv-1", epoch=3, last=(2, 40))
    beat(m, "kv-2", epoch=2, last=(2, 99))  # has not seen the fence: its log may still grow
    assert m.shards[0].primary == ""


def test_lost_primary__is_fenced_and_replaced_by_a_survivor(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 5, "kv-1"
    for rid in REPLICAS:
        beat(m, rid, epoch=5, last=(5, 10), primary=rid == "kv-1")
    time.sleep(0.35)  # kv-1 goes silent past the failover timeout
    beat(m, "kv-2", epoch=5, last=(5, 10))
    assert (m.shards[0].epoch, m.shards[0].primary) == (6, "")
    beat(m, "kv-2", epoch=6, last=(5, 10))
    beat(m, "kv-3", epoch=6, last=(5, 9))
    assert m.shards[0].primary == "kv-2"
    assert m.failovers[-1].from_replica == "kv-1"
    assert m.failovers[-1].to_replica == "kv-2"


def test_restarted_primary__gets_a_new_epoch(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 5, "kv-1"
    for _ in range(3):  # back, reporting our epoch, but not primary: it never resumes one
        beat(m, "kv-1", epoch=5, last=(5, 10), primary=False)
    assert m.shards[0].epoch == 6


def test_restarted_primary__that_lost_its_epoch__is_fenced_at_once(tmp_path: Path) -> None:
    # kv-1 led epoch 5 without syncing it (a primary acts before its store catches up); it
    # comes back as a new process reporting epoch 4: it must not be shown epoch 5 again.
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 5, "kv-1"
    for rid in REPLICAS:
        beat(m, rid, epoch=5, last=(5, 10), primary=rid == "kv-1", incarnation=11)
    assert m.shards[0].primary_incarnation == 11
    response = beat(m, "kv-1", epoch=4, last=(4, 9), incarnation=12)
    assert (m.shards[0].epoch, m.shards[0].primary) == (6, "")
    assert (response.shards[0].epoch, response.shards[0].primary) == (6, "")


def test_epochs__survive_a_manager_restart(tmp_path: Path) -> None:
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 7, ""
    for rid in REPLICAS:
        beat(m, rid, epoch=7, last=(7, 1))
    again = manager(tmp_path)
    assert (again.shards[0].epoch, again.shards[0].primary) == (7, m.shards[0].primary)


def test_rebalance__moves_one_primary_to_an_idle_caught_up_replica(tmp_path: Path) -> None:
    m = manager(tmp_path, shards=3)
    for shard in m.shards:
        shard.epoch, shard.primary = 2, "kv-1"
    m._last_change -= 60
    for rid in REPLICAS:
        beat(m, rid, epoch=2, last=(2, 5), primary=rid == "kv-1")
    moved = [s for s in m.shards if s.epoch == 3]
    assert len(moved) == 1
    assert moved[0].primary in {"kv-2", "kv-3"}
    assert moved[0].handover_from == "kv-1"  # a handover, not a fence


def _handing_over(tmp_path: Path) -> ShardManager:
    """kv-1 leads shard 0 in epoch 4; the manager asks it to hand over to kv-2."""
    m = manager(tmp_path)
    m.shards[0].epoch, m.shards[0].primary = 4, "kv-1"
    for rid in REPLICAS:
        beat(m, rid, epoch=4, last=(4, 10), primary=rid == "kv-1")
    m.hand_off(0, "kv-2")
    return m


def _seen(response: pb.HeartbeatResponse) -> tuple[int, str, str]:
    (info,) = response.shards
    return info.epoch, info.primary, info.handover_from


def test_handover__shown_to_the_primary_alone_until_the_successor_leads(tmp_path: Path) -> None:
    m = _handing_over(tmp_path)
    assert _seen(beat(m, "kv-1", epoch=4, last=(4, 10), primary=True)) == (5, "kv-2", "kv-1")
    assert _seen(beat(m, "kv-3", epoch=4, last=(4, 10))) == (4, "kv-1", "")
    assert _seen(beat(m, "kv-2", epoch=4, last=(4, 10))) == (4, "kv-1", "")
    table = m.routing_table().shards[0]
    assert (table.epoch, table.primary) == (4, "kv-1")  # clients go on to kv-1 meanwhile
    # kv-1 stepped down; kv-2 took over (it reports leading epoch 5): everyone sees it.
    beat(m, "kv-1", epoch=5, last=(4, 10))
    assert _seen(beat(m, "kv-3", epoch=4, last=(4, 10))) == (4, "kv-1", "")
    assert _seen(beat(m, "kv-2", epoch=5, last=(5, 11), primary=True)) == (5, "kv-2", "")
    assert _seen(beat(m, "kv-3", epoch=5, last=(5, 11))) == (5, "kv-2", "")


def test_handover__not_done_in_time__fences_and_elects_the_successor(tmp_path: Path) -> None:
    m = _handing_over(tmp_path)
    m.shards[0].handover_at -= HANDOVER_TIMEOUT_S + 0.1  # (kv-1 never handed over)
    beat(m, "kv-3", epoch=4, last=(4, 10))
    assert (m.shards[0].epoch, m.shards[0].primary, m.shards[0].handover_from) == (6, "", "")
    for rid in REPLICAS:
        beat(m, rid, epoch=6, last=(4, 10))
    assert m.shards[0].primary == "kv-2"  # the planned successor wins the tie


def test_handover__survives_a_manager_restart(tmp_path: Path) -> None:
    _handing_over(tmp_path)
    again = manager(tmp_path)
    shard = again.shards[0]
    assert (shard.epoch, shard.primary, shard.handover_from) == (5, "kv-2", "kv-1")


@pytest.mark.parametrize("unknown", ["kv-9", ""])
def test_heartbeat__from_an_unknown_replica_is_refused(tmp_path: Path, unknown: str) -> None:
    with pytest.raises(KeyError):
        manager(tmp_path).heartbeat(pb.HeartbeatRequest(replica_id=unknown))


def test_placement__settled_only_when_primaries_are_spread_over_live_replicas(
    tmp_path: Path,
) -> None:
    def status(primaries: list[str], up: tuple[str, ...] = tuple(REPLICAS)) -> pb.StatusResponse:
        m = manager(tmp_path, shards=len(primaries))
        for shard, primary in zip(m.shards, primaries, strict=True):
            shard.epoch, shard.primary = 2, primary
        for rid in up:
            m.replicas[rid].last_seen = time.monotonic()  # heard from just now
        return m.status()

    assert status(["kv-1", "kv-2", "kv-3", "kv-1"]).placement_settled
    assert not status(["kv-1", "kv-2", "kv-1", "kv-2"]).placement_settled  # kv-3 leads none
    assert not status(["kv-1", "", "kv-3"]).placement_settled  # a shard without a primary
    # kv-3 is down: the others sharing its primaries evenly is as settled as it gets
    assert status(["kv-1", "kv-2", "kv-1", "kv-2"], up=("kv-1", "kv-2")).placement_settled


def test_moves__mapping_and_unfinished_moves_survive_a_restart(tmp_path: Path) -> None:
    m = manager(tmp_path, shards=4)
    assert m.routing_table().microshard_to_shard[5] == 1  # round robin to start with
    m.mapping[5] = 3
    m.moves[9] = Move(9, from_shard=1, to_shard=2, step="copy", keys=10)
    m.save()
    again = manager(tmp_path, shards=4)
    table = again.routing_table()
    assert table.microshard_to_shard[5] == 3
    assert table.microshard_to_shard[9] == 1  # not flipped yet
    assert table.version == m.routing_version
    assert again.moves[9].step == "copy"
    assert [(mv.microshard, mv.step) for mv in again.status().moves] == [(9, "copy")]
