"""What a primary serves, per shard and per μshard, reported to the shard manager with each
heartbeat (after Akkio's access counters): the manager moves hot μshards off a primary that
carries more than its part (``mt_kv.manager.hotspots``).

Counting is a dict increment per key; the rates are exponentially weighted averages, updated
every ``REPORT_S`` (a heartbeat in between carries the last report again: folding a busy
replica's thousand μshards every 100 ms cost it ~1% of a core).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, MutableMapping
from typing import TypeVar

from mt_kv_contract.keys import microshard
from mt_proto import kv_pb2 as pb

HALF_LIFE_S = 0.5  # of the reported per-shard and per-μshard rates
HOT_PER_SHARD = 8  # μshards reported per shard, the busiest
MIN_RATE = 0.1  # keys/s: rates below this are dropped (placement ignores far more)
REPORT_S = 0.5  # how often the rates are updated

K = TypeVar("K", bound=Hashable)


def decay(
    rates: MutableMapping[K, tuple[float, ...]],
    counts: Mapping[K, tuple[int, ...]],
    elapsed_s: float,
    half_life_s: float,
) -> None:
    """Fold ``counts`` (events over ``elapsed_s``) into ``rates`` (per second, averaged over
    about ``half_life_s``); an entry whose first rate fell below MIN_RATE is dropped."""
    weight = 1 - 0.5 ** (elapsed_s / half_life_s)
    for key in set(rates) | set(counts):
        seen = counts.get(key)
        old = rates.get(key)
        if old is None:
            old = (0.0,) * len(seen or ())
        new = tuple(
            rate + weight * ((seen[i] if seen else 0) / elapsed_s - rate)
            for i, rate in enumerate(old)
        )
        if new[0] < MIN_RATE:
            rates.pop(key, None)
        else:
            rates[key] = new


class Load:
    """Keys served as a primary, per (shard, μshard)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self.microshards = 0  # from the shard manager; 0: not known yet, nothing counted
        self._counts: defaultdict[tuple[int, int], int] = defaultdict(int)
        self._rates: dict[tuple[int, int], tuple[float, ...]] = {}
        self._reported_at = clock()
        self._report: list[pb.ShardLoad] = []

    def count(self, shard: int, keys: Iterable[pb.Key]) -> None:
        n = self.microshards
        if not n:
            return
        counts = self._counts
        for key in keys:
            counts[shard, microshard(key.keyspace, key.partition, n)] += 1

    def report(self) -> list[pb.ShardLoad]:
        now = self._clock()
        elapsed = now - self._reported_at
        if elapsed < REPORT_S:
            return self._report
        self._reported_at = now
        decay(self._rates, {k: (n,) for k, n in self._counts.items()}, elapsed, HALF_LIFE_S)
        self._counts.clear()
        self._report = self._shards()
        return self._report

    def _shards(self) -> list[pb.ShardLoad]:
        shards: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for (shard, u), (rate,) in self._rates.items():
            shards[shard].append((rate, u))
        out = []
        for shard, loads in sorted(shards.items()):
            loads.sort(reverse=True)
            hot = [pb.MicroshardLoad(microshard=u, ops_per_s=r) for r, u in loads[:HOT_PER_SHARD]]
            out.append(pb.ShardLoad(shard=shard, ops_per_s=sum(r for r, _ in loads), hot=hot))
        return out
