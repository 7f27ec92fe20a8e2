"""Shard copies placed by count, a few moves at a time, draining replicas emptied first; and a
replica move walked through its steps by heartbeats (no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mt_kv.manager.core import ShardManager
from mt_kv.manager.placement import Copyset, counts, plan
from mt_kv.manager.reconfig import CATCH_UP_TIMEOUT_S, CAUGHT_UP_HOLD_S
from mt_proto import kv_pb2 as pb

FOUR = ("kv-1", "kv-2", "kv-3", "kv-4")


def _three_on_three(shards: int = 16) -> list[Copyset]:
    return [Copyset(s, ("kv-1", "kv-2", "kv-3"), f"kv-{s % 3 + 1}") for s in range(shards)]


def _apply(shards: list[Copyset], moves: list[tuple[int, str, str]]) -> list[Copyset]:
    out = list(shards)
    for shard, source, target in moves:
        c = out[shard]
        voters = tuple(target if v == source else v for v in c.voters)
        out[shard] = Copyset(shard, voters, target if c.primary == source else c.primary)
    return out


def test_plan__a_new_replica_is_filled_until_every_replica_is_within_one_of_the_mean() -> None:
    shards = _three_on_three()
    rounds = 0
    while moves := plan(shards, FOUR, (), (), max_moves=2):
        assert len({m.shard for m in moves}) == len(moves)
        busy = [r for m in moves for r in (m.source, m.target)]
        assert len(busy) == len(set(busy))  # one move per replica at a time
        shards = _apply(shards, [(m.shard, m.source, m.target) for m in moves])
        rounds += 1
    held = counts(shards, FOUR)
    assert max(held.values()) - min(held.values()) <= 1
    assert held["kv-4"] == 12
    assert rounds == 12


def test_plan__moves_a_copy_its_replica_does_not_lead_first() -> None:
    moves = plan(_three_on_three(3), FOUR, (), (), max_moves=1)
    assert [(m.shard, m.source, m.target) for m in moves] == [(0, "kv-3", "kv-4")]


def test_plan__a_draining_replica_is_emptied_and_takes_nothing() -> None:
    shards = [Copyset(s, ("kv-1", "kv-2", "kv-4"), "kv-1") for s in range(3)]
    moves = plan(shards, FOUR, ("kv-4",), (), max_moves=4)
    assert [(m.source, m.target) for m in moves] == [("kv-4", "kv-3")]  # one at a time
    assert plan(shards, FOUR, ("kv-4",), ("kv-4",), max_moves=4) == []


def test_plan__nothing_for_a_shard_already_moving_or_when_even() -> None:
    shards = _three_on_three(4)
    moving = [Copyset(c.shard, c.voters, c.primary, moving=True) for c in shards]
    assert plan(moving, FOUR, (), (), max_moves=4) == []
    assert plan(shards, ("kv-1", "kv-2", "kv-3"), (), (), max_moves=4) == []


# ---------------------------------------------------------------- a move through heartbeats


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _manager(tmp_path: Path, clock: Clock) -> ShardManager:
    replicas = {rid: f"a:{n}" for n, rid in enumerate(FOUR[:3])}
    m = ShardManager(
        replicas, 1, 64, tmp_path / "m.json", failover_timeout_ms=3_000, lease_ms=200, clock=clock
    )
    m.add_replica("kv-4", "a:4")
    return m


def _report(
    m: ShardManager, rid: str, epoch: int, *, seq: int = 10, applied: int = 0, primary: bool = False
) -> pb.HeartbeatResponse:
    progress = pb.ShardProgress(
        shard=0,
        epoch=epoch,
        last_epoch=epoch,
        last_seq=seq,
        applied_seq=seq,
        applied_epoch=applied,
        primary=primary,
    )
    return m.heartbeat(pb.HeartbeatRequest(replica_id=rid, shards=[progress]))


def _everyone(m: ShardManager, clock: Clock, *, leader: str = "kv-2", until: int = 0) -> None:
    """One round of heartbeats: the primary has applied an entry of its epoch (the round
    ends early once the shard is at epoch ``until``)."""
    shard = m.shards[0]
    for rid in FOUR:
        if until and shard.epoch >= until:
            return
        if rid in (*shard.replicas, *shard.learners):
            lead = rid == leader
            _report(m, rid, shard.epoch, applied=shard.epoch if lead else 0, primary=lead)
        else:  # (holding nothing yet)
            m.heartbeat(pb.HeartbeatRequest(replica_id=rid))
    clock.now += 0.25


def _established(tmp_path: Path, clock: Clock, leader: str) -> ShardManager:
    m = _manager(tmp_path, clock)
    shard = m.shards[0]
    shard.epoch, shard.primary = 3, leader
    _everyone(m, clock, leader=leader)
    assert shard.stable == ["kv-1", "kv-2", "kv-3"]
    return m


def test_move__learner_then_four_voters_then_three_one_epoch_each(tmp_path: Path) -> None:
    clock = Clock()
    m = _established(tmp_path, clock, leader="kv-2")
    shard = m.shards[0]
    m.reconfigs.request(0, "kv-1", "kv-4")
    seen = []
    save = m.save

    def saving() -> None:
        seen.append((shard.epoch, tuple(shard.replicas), tuple(shard.learners)))
        save()

    m.save = saving  # type: ignore[method-assign]
    for _ in range(12):
        _everyone(m, clock)
    assert seen[0] == (3, ("kv-1", "kv-2", "kv-3"), ("kv-4",))
    sets = [voters for voters in dict.fromkeys(voters for _, voters, _ in seen)]
    assert sets == [
        ("kv-1", "kv-2", "kv-3"),
        ("kv-1", "kv-2", "kv-3", "kv-4"),
        ("kv-2", "kv-3", "kv-4"),
    ]
    assert (shard.epoch, shard.primary) == (5, "kv-2")  # in place: never fenced
    assert m.reconfigs.moves[0].step == "done"


def test_move__the_epoch_continued_in_place_is_shown_to_its_primary_first(
    tmp_path: Path,
) -> None:
    clock = Clock()
    m = _established(tmp_path, clock, leader="kv-2")
    shard = m.shards[0]
    m.reconfigs.request(0, "kv-1", "kv-4")
    while shard.epoch == 3:
        _everyone(m, clock, until=4)
        clock.now += CAUGHT_UP_HOLD_S
    (theirs,) = _report(m, "kv-4", 3).shards
    assert (theirs.epoch, list(theirs.replicas), list(theirs.learners)) == (
        3,
        ["kv-1", "kv-2", "kv-3"],
        ["kv-4"],
    )
    (primarys,) = _report(m, "kv-2", 3, primary=True).shards
    assert (primarys.epoch, primarys.continues_epoch) == (4, 3)
    _report(m, "kv-2", 4, primary=True)  # it took the new epoch: shown to everyone now
    (theirs,) = _report(m, "kv-4", 3).shards
    assert (theirs.epoch, list(theirs.replicas)) == (4, ["kv-1", "kv-2", "kv-3", "kv-4"])


def test_move__of_the_primarys_copy_hands_it_over_first(tmp_path: Path) -> None:
    clock = Clock()
    m = _established(tmp_path, clock, leader="kv-1")
    shard = m.shards[0]
    m.reconfigs.request(0, "kv-1", "kv-4")
    for _ in range(6):
        _everyone(m, clock, leader="kv-1")
    assert m.reconfigs.moves[0].step == "handoff"
    assert shard.primary in ("", "kv-4")  # fenced, the target planned to win the election
    for _ in range(8):
        _everyone(m, clock, leader=shard.primary or "kv-4")
    assert shard.primary == "kv-4"
    assert shard.replicas == ["kv-2", "kv-3", "kv-4"]
    assert m.reconfigs.moves[0].step == "done"


def test_move__a_target_that_does_not_catch_up_is_abandoned_never_promoted(
    tmp_path: Path,
) -> None:
    clock = Clock()
    m = _established(tmp_path, clock, leader="kv-2")
    shard = m.shards[0]
    m.reconfigs.request(0, "kv-1", "kv-4")
    _everyone(m, clock)
    for _ in range(3):
        clock.now += CATCH_UP_TIMEOUT_S / 2
        _report(m, "kv-4", 3, seq=10)  # far behind
        for rid in ("kv-1", "kv-2", "kv-3"):
            _report(m, rid, 3, seq=1_000, applied=3 if rid == "kv-2" else 0, primary=rid == "kv-2")
    move = m.reconfigs.moves[0]
    assert (move.step, shard.replicas, shard.learners) == (
        "abandoned",
        ["kv-1", "kv-2", "kv-3"],
        [],
    )
    assert "caught up" in move.error


def test_move__state_survives_a_manager_restart(tmp_path: Path) -> None:
    clock = Clock()
    m = _established(tmp_path, clock, leader="kv-2")
    m.reconfigs.request(0, "kv-1", "kv-4")
    for _ in range(3):
        _everyone(m, clock)
    m.save()
    again = _manager(tmp_path, clock)
    assert again.shards[0].replicas == m.shards[0].replicas
    assert again.shards[0].learners == m.shards[0].learners
    assert again.reconfigs.moves[0].step == m.reconfigs.moves[0].step
    assert "kv-4" in again.replicas


@pytest.mark.parametrize(("source", "target"), [("kv-4", "kv-1"), ("kv-1", "kv-2")])
def test_move__refused_unless_from_a_voter_to_a_non_member(
    tmp_path: Path, source: str, target: str
) -> None:
    m = _manager(tmp_path, Clock())
    with pytest.raises(ValueError, match="shard 0"):
        m.reconfigs.request(0, source, target)


def test_drain__refused_below_three_replicas_and_undone_by_adding_it_again(
    tmp_path: Path,
) -> None:
    m = _manager(tmp_path, Clock())
    m.drain("kv-4")
    assert m.replica_info("kv-4").state == "drained"  # (it held nothing)
    with pytest.raises(ValueError, match="would leave 2"):
        m.drain("kv-1")
    m.add_replica("kv-4", "b:4")
    assert (m.replica_info("kv-4").state, m.replicas["kv-4"].addr) == ("active", "b:4")
