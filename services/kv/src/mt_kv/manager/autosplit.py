"""When the shard manager splits a shard by itself: one too large or too hot for a while.

A shard whose primary holds more than ``max_items`` keys of it, or serves more than
``max_keys_per_s`` of it with no single μshard carrying most of that (a split cannot spread one
μshard: that is a hot spot, reported by ``hotspots.py``), for ``HOLD_S``, is split in two
(``ShardManager.split``: a new shard, every other μshard moved there one at a time) — as TiKV's
PD splits a Region past its size or its QPS threshold. One split at a time, none while μshards or
copies move, and after one the reports must show its effect first (``COOLDOWN_S``).
Pure: the caller gives the shards' sizes and loads, and the clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

HOLD_S = 10.0  # a shard must stay over a threshold this long
COOLDOWN_S = 30.0  # after a split, before the next may start
MAX_HOT_SHARE = 0.5  # a shard whose busiest μshard carries more than this is a hot spot


@dataclass(frozen=True)
class ShardSize:
    shard: int
    items: int  # keys its primary holds
    keys_per_s: float  # keys its primary serves per second
    busiest_per_s: float  # ... of which its busiest μshard
    microshards: int


@dataclass
class AutoSplit:
    max_items: int  # 0: never for size
    max_keys_per_s: float  # 0: never for load
    over_since: dict[int, float] = field(default_factory=dict)
    split_at: float | None = None

    def plan(self, shards: Sequence[ShardSize], *, busy: bool, now: float) -> int | None:
        """The shard to split now, or None (usually). ``busy``: splits or moves under way."""
        if busy or (self.split_at is not None and now - self.split_at < COOLDOWN_S):
            self.over_since.clear()
            return None
        over = [s for s in shards if self._over(s)]
        self.over_since = {s.shard: self.over_since.get(s.shard, now) for s in over}
        ready = [s for s in over if now - self.over_since[s.shard] >= HOLD_S]
        if not ready:
            return None
        pick = max(ready, key=self._excess)
        self.split_at = now
        self.over_since.clear()
        return pick.shard

    def _over(self, s: ShardSize) -> bool:
        if s.microshards < 2:
            return False  # nothing to split
        too_large = 0 < self.max_items < s.items
        too_hot = (
            0 < self.max_keys_per_s < s.keys_per_s
            and s.busiest_per_s <= MAX_HOT_SHARE * s.keys_per_s
        )
        return too_large or too_hot

    def _excess(self, s: ShardSize) -> float:
        """How far over its thresholds a shard is (the furthest goes first)."""
        size = s.items / self.max_items if self.max_items else 0.0
        load = s.keys_per_s / self.max_keys_per_s if self.max_keys_per_s else 0.0
        return max(size, load)
