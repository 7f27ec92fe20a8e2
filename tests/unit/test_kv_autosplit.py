"""The shard manager's own splits: a shard too large, or too hot without one μshard being the
hot spot, for a while — one split at a time, none while others move, and a pause after each."""

from __future__ import annotations

from mt_kv.manager.autosplit import COOLDOWN_S, HOLD_S, AutoSplit, ShardSize


def _size(shard: int, items: int = 10, keys_per_s: float = 0.0, busiest: float = 0.0) -> ShardSize:
    return ShardSize(shard, items, keys_per_s, busiest, microshards=8)


def test_autosplit__a_shard_too_large_for_the_hold_window_is_split() -> None:
    auto = AutoSplit(max_items=100, max_keys_per_s=0)
    shards = [_size(0, items=150), _size(1, items=50)]
    assert auto.plan(shards, busy=False, now=0.0) is None
    assert auto.plan(shards, busy=False, now=HOLD_S - 0.1) is None
    assert auto.plan(shards, busy=False, now=HOLD_S) == 0


def test_autosplit__dropping_below_starts_the_window_again() -> None:
    auto = AutoSplit(max_items=100, max_keys_per_s=0)
    assert auto.plan([_size(0, items=150)], busy=False, now=0.0) is None
    assert auto.plan([_size(0, items=90)], busy=False, now=5.0) is None
    assert auto.plan([_size(0, items=150)], busy=False, now=6.0) is None
    assert auto.plan([_size(0, items=150)], busy=False, now=HOLD_S + 1.0) is None
    assert auto.plan([_size(0, items=150)], busy=False, now=HOLD_S + 6.0) == 0


def test_autosplit__a_hot_shard_is_split_unless_one_microshard_is_the_heat() -> None:
    auto = AutoSplit(max_items=0, max_keys_per_s=1_000)
    spread = [_size(0, keys_per_s=1_500, busiest=300)]
    one_hot = [_size(1, keys_per_s=1_500, busiest=1_200)]  # moving half would not spread it
    assert auto.plan(spread + one_hot, busy=False, now=0.0) is None
    assert auto.plan(spread + one_hot, busy=False, now=HOLD_S) == 0
    auto = AutoSplit(max_items=0, max_keys_per_s=1_000)
    assert auto.plan(one_hot, busy=False, now=0.0) is None
    assert auto.plan(one_hot, busy=False, now=HOLD_S * 10) is None


def test_autosplit__nothing_while_busy_and_a_pause_after_a_split() -> None:
    auto = AutoSplit(max_items=100, max_keys_per_s=0)
    big = [_size(0, items=500), _size(1, items=400)]
    assert auto.plan(big, busy=False, now=0.0) is None
    assert auto.plan(big, busy=True, now=HOLD_S) is None  # a move under way: the window restarts
    assert auto.plan(big, busy=False, now=HOLD_S + 1) is None
    assert auto.plan(big, busy=False, now=2 * HOLD_S + 1) == 0  # the furthest over first
    later = 2 * HOLD_S + 1 + COOLDOWN_S - 0.1
    assert auto.plan(big, busy=False, now=later) is None
    assert auto.plan(big, busy=False, now=later + 0.1) is None  # the window starts after
    assert auto.plan(big, busy=False, now=later + 0.1 + HOLD_S) == 0


def test_autosplit__never_a_single_microshard_nor_with_thresholds_off() -> None:
    single = [ShardSize(0, items=10**6, keys_per_s=10**5, busiest_per_s=0.0, microshards=1)]
    assert AutoSplit(100, 100).plan(single, busy=False, now=0.0) is None
    assert AutoSplit(100, 100).plan(single, busy=False, now=HOLD_S * 10) is None
    off = AutoSplit(max_items=0, max_keys_per_s=0)
    big = [_size(0, items=10**6, keys_per_s=10**5)]
    assert off.plan(big, busy=False, now=0.0) is None
    assert off.plan(big, busy=False, now=HOLD_S * 10) is None
