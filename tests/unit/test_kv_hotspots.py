"""Placement by load: hot μshards moved off the busiest primary after a held imbalance, not
twice within the cooldown; one too hot to place better is reported, not moved; and the
replica's per-μshard counters that feed it."""

from __future__ import annotations

import pytest
from mt_kv.manager.hotspots import (
    COOLDOWN_S,
    HOLD_S,
    HOT_RATIO,
    MIN_EXCESS_PER_S,
    Hotspots,
    ShardLoad,
)
from mt_kv.replica.load import Load
from mt_kv_contract.keys import microshard
from mt_proto import kv_pb2 as pb

# 6 shards on 3 primaries; 600 keys/s spread evenly (100 per shard) ...
LEADERS = {0: "kv-1", 1: "kv-1", 2: "kv-2", 3: "kv-2", 4: "kv-3", 5: "kv-3"}


def _shards(hot: dict[int, list[tuple[int, float]]]) -> list[ShardLoad]:
    """... plus the hot μshards given per shard."""
    return [
        ShardLoad(s, p, 100.0 + sum(r for _, r in hot.get(s, [])), hot.get(s, []))
        for s, p in LEADERS.items()
    ]


def _loads(shards: list[ShardLoad], moves: list[tuple[int, float, int]]) -> dict[str, float]:
    loads = {p: 0.0 for p in LEADERS.values()}
    for s in shards:
        loads[s.primary] += s.ops_per_s
    for from_shard, rate, to_shard in moves:
        loads[LEADERS[from_shard]] -= rate
        loads[LEADERS[to_shard]] += rate
    return loads


def _planned(spots: Hotspots, shards: list[ShardLoad], t: float = 0.0) -> list[tuple[int, int]]:
    assert spots.plan(shards, busy=False, now=t) == []  # the imbalance must hold first
    return [(m.microshard, m.to_shard) for m in spots.plan(shards, busy=False, now=t + HOLD_S)]


def test_hot_microshards__moved_until_the_busiest_is_within_the_ratio() -> None:
    hot = {0: [(10, 100.0), (11, 100.0), (12, 100.0), (13, 100.0)]}  # 40% of 1000 on shard 0
    shards = _shards(hot)
    spots = Hotspots()
    moves = _planned(spots, shards)
    assert 1 <= len(moves) <= 3
    where = {u: 0 for u, _ in hot[0]}
    after = _loads(shards, [(where[u], 100.0, to) for u, to in moves])
    assert max(after.values()) <= HOT_RATIO * sum(after.values()) / 3
    assert all(LEADERS[to] != "kv-1" for _, to in moves)


def test_hot_microshards__not_moved_twice_within_the_cooldown() -> None:
    shards = _shards({0: [(10, 100.0), (11, 100.0), (12, 100.0), (13, 100.0)]})
    spots = Hotspots()
    first = {u for u, _ in _planned(spots, shards)}
    again = _planned(spots, shards, t=60.0)  # (reports unchanged: as if nothing had moved)
    assert first
    assert not first & {u for u, _ in again}
    later = _planned(spots, shards, t=COOLDOWN_S + 10)
    assert first & {u for u, _ in later}


def test_one_microshard_too_hot__is_reported_not_moved() -> None:
    shards = _shards({0: [(10, 600.0)]})  # half of 1,200 keys/s
    spots = Hotspots()
    assert _planned(spots, shards) == []
    assert len(spots.notes) == 1
    assert "μshard 10 carries 50%" in spots.notes[0]


def test_imbalance__short_or_while_moves_run__plans_nothing() -> None:
    shards = _shards({0: [(10, 100.0), (11, 100.0), (12, 100.0), (13, 100.0)]})
    spots = Hotspots()
    assert spots.plan(shards, busy=False, now=0.0) == []
    assert spots.plan(shards, busy=True, now=HOLD_S) == []  # the window starts again
    assert spots.plan(shards, busy=False, now=HOLD_S + 0.1) == []
    assert spots.plan(shards, busy=False, now=2 * HOLD_S + 0.2) != []


def test_even_load__plans_nothing() -> None:
    spots = Hotspots()
    assert _planned(spots, _shards({})) == []
    assert spots.notes == []


def test_replica_load__counts_keys_per_microshard_and_reports_the_busiest() -> None:
    now = [0.0]
    served = Load(lambda: now[0])
    served.count(3, [pb.Key(keyspace="posts", partition=b"a", key=b"k")])  # not counted yet
    served.microshards = 1024
    hot = pb.Key(keyspace="posts", partition=b"hot", key=b"k")
    cold = pb.Key(keyspace="posts", partition=b"cold", key=b"k")
    for _ in range(40):  # 4 s: 90 keys of one partition, 10 of another, per 100 ms
        served.count(3, [hot] * 90 + [cold] * 10)
        now[0] += 0.1
        report = served.report()
    (shard,) = report
    assert shard.shard == 3
    assert shard.ops_per_s == pytest.approx(1000, rel=0.01)
    assert shard.hot[0].microshard == microshard("posts", b"hot", 1024)
    assert shard.hot[0].ops_per_s == pytest.approx(900, rel=0.01)


def test_one_microshard_too_hot__reported_even_once_moved() -> None:
    spots = Hotspots(moved_at={10: 0.0})  # moved a minute ago: cooling down
    assert _planned(spots, _shards({0: [(10, 600.0)]}), t=60.0) == []
    assert "μshard 10" in spots.notes[0]


def test_a_move_that_would_make_the_coolest_hot__is_not_planned() -> None:
    # kv-1: 200 + 250 + 50 = 500 of 900 (mean 300, ratio 1.2: 360); the others 200 each.
    spots = Hotspots()
    moves = _planned(spots, _shards({0: [(10, 250.0)], 1: [(11, 50.0)]}))
    assert [u for u, _ in moves] == [11]  # 250 more would make its new primary the busiest
    assert "μshard 10" in spots.notes[0]


def test_light_load__imbalance_below_the_absolute_floor__moves_nothing() -> None:
    # 2x the mean, but the whole cluster serves 120 keys/s: noise, not a hot spot.
    light = {0: "kv-1", 1: "kv-2", 2: "kv-3"}
    shards = [
        ShardLoad(0, "kv-1", 80.0, [(10, 20.0), (11, 20.0), (12, 20.0), (13, 20.0)]),
        ShardLoad(1, "kv-2", 20.0, []),
        ShardLoad(2, "kv-3", 20.0, []),
    ]
    assert MIN_EXCESS_PER_S > 80.0 - 40.0  # (the mean is 40)
    assert HOT_RATIO * 40.0 < 80.0
    spots = Hotspots()
    assert _planned(spots, shards) == []
    scaled = [
        ShardLoad(s.shard, light[s.shard], 10 * s.ops_per_s, [(u, 10 * r) for u, r in s.hot])
        for s in shards
    ]
    assert _planned(Hotspots(), scaled) != []  # the same shape at 10x the load: moved
