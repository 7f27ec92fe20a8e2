"""Placement by load: hot μshards moved off a primary that carries more than its part.

Each primary reports the keys per second it serves per shard, with the shard's busiest μshards
(``mt_kv.replica.load``). When the busiest replica's load has stayed above ``HOT_RATIO`` x the
mean, and by at least ``MIN_EXCESS_PER_S``, for ``HOLD_S`` (a threshold held over a window, as
TiKV's PD and CockroachDB do; the absolute floor, as CockroachDB's minimum QPS difference,
keeps a lightly loaded cluster's noise from moving anything), moves are planned at once,
greedily: each takes the μshard of the busiest replica that best evens it with the coolest one
(to the coolest's least loaded shard) and leaves the coolest within the ratio, until the
busiest is within it. Hysteresis: a μshard moved is not moved again for ``COOLDOWN_S``, nothing
is planned while moves run, and the window starts again after they finish (the reports must
show their effect first). A μshard too hot to place better — no replica could take it and stay
within the ratio — is reported in a note, not bounced around.
Pure: the caller gives the reports and the clock, and hands the moves to the Mover.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

HOT_RATIO = 1.2  # busiest replica's load over the mean that calls for moves
HOLD_S = 2.0  # the imbalance must hold this long
COOLDOWN_S = 300.0  # a moved μshard stays where it went at least this long
MIN_SHARE = 0.02  # a μshard lighter than this share of all load is not worth a move
MIN_MOVE_PER_S = 20.0  # ... nor one lighter than this
MIN_EXCESS_PER_S = 100.0  # the busiest must carry this much more than the mean to matter
MAX_MOVES = 4  # planned in one go
MIN_TOTAL_PER_S = 50.0  # below this the cluster is idle: nothing to balance


@dataclass(frozen=True)
class ShardLoad:
    shard: int
    primary: str
    ops_per_s: float
    hot: Sequence[tuple[int, float]]  # (μshard, keys/s), busiest first


@dataclass(frozen=True)
class HotMove:
    microshard: int
    to_shard: int
    source: str
    target: str
    ops_per_s: float


@dataclass
class Hotspots:
    over_since: float | None = None
    moved_at: dict[int, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def plan(
        self,
        shards: Sequence[ShardLoad],
        *,
        busy: bool,
        now: float,
    ) -> list[HotMove]:
        """The moves to start now (usually none). ``shards``: every shard with a live primary
        (a μshard moves between shards, so load moves between the replicas leading them)."""
        loads: dict[str, float] = {}
        for s in shards:
            loads[s.primary] = loads.get(s.primary, 0.0) + s.ops_per_s
        total = sum(loads.values())
        if busy or len(loads) < 2 or total < MIN_TOTAL_PER_S:
            self.over_since = None
            return []
        mean = total / len(loads)
        if not _too_busy(max(loads.values()), mean):
            self.over_since = None
            self.notes = []
            return []
        if self.over_since is None:
            self.over_since = now
        if now - self.over_since < HOLD_S:
            return []
        self.over_since = None
        moves = self._greedy(shards, loads, mean, total, now)
        for move in moves:
            self.moved_at[move.microshard] = now
        return moves

    def _greedy(
        self,
        shards: Sequence[ShardLoad],
        loads: dict[str, float],
        mean: float,
        total: float,
        now: float,
    ) -> list[HotMove]:
        leader = {s.shard: s.primary for s in shards}
        shard_load = {s.shard: s.ops_per_s for s in shards}
        hot_ones = {u: (s.shard, rate) for s in shards for u, rate in s.hot}
        candidates = {
            u: (shard, rate)
            for u, (shard, rate) in hot_ones.items()
            if rate >= max(MIN_SHARE * total, MIN_MOVE_PER_S)
            and now - self.moved_at.get(u, -1e18) >= COOLDOWN_S
        }
        moves: list[HotMove] = []
        self.notes = []
        while len(moves) < MAX_MOVES:
            hot = max(loads, key=loads.__getitem__)
            cool = min(loads, key=loads.__getitem__)
            if not _too_busy(loads[hot], mean):
                break
            gap = loads[hot] - loads[cool]
            room = HOT_RATIO * mean - loads[cool]  # what the coolest may take and stay cool
            mine = [(u, rate) for u, (shard, rate) in candidates.items() if leader[shard] == hot]
            better = [(u, rate) for u, rate in mine if rate < gap and rate <= room]
            if not better:
                self._note_too_hot(hot_ones, leader, hot, room, total)
                break
            u, rate = min(better, key=lambda c: abs(gap / 2 - c[1]))
            to_shard = min(
                (s for s, primary in leader.items() if primary == cool), key=shard_load.__getitem__
            )
            moves.append(HotMove(u, to_shard, hot, cool, rate))
            from_shard, _ = candidates.pop(u)
            loads[hot] -= rate
            loads[cool] += rate
            shard_load[from_shard] -= rate
            shard_load[to_shard] += rate
        return moves

    def _note_too_hot(
        self,
        hot_ones: dict[int, tuple[int, float]],
        leader: dict[int, str],
        hot: str,
        room: float,
        total: float,
    ) -> None:
        """Report the busiest μshard of replica ``hot`` if no replica could take it and
        stay within the ratio (moved or not, it is the hot spot)."""
        mine = [(rate, u) for u, (shard, rate) in hot_ones.items() if leader[shard] == hot]
        if mine:
            rate, u = max(mine)
            if rate > room:
                self.notes.append(
                    f"μshard {u} carries {rate / total:.0%} of the load, on {hot}: too hot to"
                    " place better by moving it (its partitions need spreading)"
                )


def _too_busy(load: float, mean: float) -> bool:
    return load > HOT_RATIO * mean and load - mean >= MIN_EXCESS_PER_S


def shard_loads(
    reports: Mapping[str, Sequence[tuple[int, float, Sequence[tuple[int, float]]]]],
    primaries: Mapping[int, str],
) -> list[ShardLoad]:
    """Every shard with a primary, at the load that primary last reported for it (none: 0;
    a replica's report of a shard it no longer leads is left out)."""
    reported = {
        (replica, shard): (rate, hot)
        for replica, shards in reports.items()
        for shard, rate, hot in shards
    }
    out = []
    for shard, primary in sorted(primaries.items()):
        rate, hot = reported.get((primary, shard), (0.0, ()))
        out.append(ShardLoad(shard, primary, rate, hot))
    return out
