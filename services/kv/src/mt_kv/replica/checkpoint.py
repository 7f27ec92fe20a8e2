"""Checkpoints: applied effects reach the store's items in the background.

A write is durable once its log entry is (the log is written before anything is
acknowledged); the stored items are what a restart loads so it need not replay the whole log.
So the replica keeps, per shard, the keys changed since the last checkpoint (``Shard.dirty``,
each key's latest value) and, every ``checkpoint_interval_ms`` (or sooner once
``checkpoint_max_keys`` wait), writes them as a *delta* segment of each shard, packed (see
store.py), with the applied position they bring it to. Once a shard's deltas since its base
hold as many items as the base (or there are ``MAX_DELTAS`` of them), the checkpoint writes a
new *base* instead — the shard's whole in-memory state — and the older segments go: each item
is rewritten about twice on average, and a restart applies at most a base's worth of deltas.

Checkpoints go to the store's items (a database of their own: the write path's log
transactions never wait for them). A crash before one commits loses nothing: the log keeps
every entry past the last committed checkpoint's position (trims never pass it), and applying
an entry again gives the same value.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from mt_kv.replica.shard import Shard
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Durable, Position, Segment

log = logging.getLogger(__name__)


MAX_DELTAS = 64  # a shard's deltas since its base before the next checkpoint rebases it
MIN_BASE_ITEMS = 10_000  # no rebase of a small shard for fewer delta items than this


@dataclass(frozen=True)
class _Taken:
    shard: Shard
    applied_seq: int
    applied_epoch: int


class Checkpointer:
    def __init__(
        self,
        settings: ReplicaSettings,
        store: Durable,
        shards: dict[int, Shard],
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self._settings = settings
        self._rng = rng
        self._store = store
        self._shards = shards
        self._task: asyncio.Task[None] | None = None
        # Replicas started together would checkpoint together, a burst of CPU on the whole box
        # every interval (puts' p99 showed it): each starts at a random point of its interval,
        # and every interval varies a little, so they drift apart.
        self._next_at = clock() + self._interval_s() * rng.random()
        self._base_items: dict[int, int] = {}  # shard -> items in its base
        self._delta_items: dict[int, int] = {}  # shard -> items in its deltas since the base
        self._deltas: dict[int, int] = {}  # shard -> deltas since the base

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def maybe_start(self, now: float) -> None:
        """Start a checkpoint if one is due and none is running."""
        if self.running:
            return
        waiting = sum(len(s.dirty) for s in self._shards.values())
        full = waiting >= self._settings.checkpoint_max_keys
        if not waiting or not (now >= self._next_at or full):
            return
        written: list[Segment] = []
        taken: list[_Taken] = []
        for shard in self._shards.values():
            if shard.dirty and not shard.snapshotting:
                written.append(self._segment(shard))
                taken.append(_Taken(shard, shard.applied_seq, shard.applied_epoch))
        self._next_at = now + self._interval_s()
        self._task = asyncio.create_task(self._write(written, taken), name="kv-checkpoint")

    def _segment(self, shard: Shard) -> Segment:
        """The shard's next segment: its changes since the last checkpoint (a delta), or, once
        its deltas outweigh its base, all of it (a new base)."""
        dirty, shard.dirty = shard.dirty, {}
        delta_items = self._delta_items.get(shard.id, 0) + len(dirty)
        deltas = self._deltas.get(shard.id, 0) + 1
        rebase = deltas > MAX_DELTAS or delta_items >= max(
            self._base_items.get(shard.id, 0), MIN_BASE_ITEMS
        )
        if not rebase:
            self._delta_items[shard.id], self._deltas[shard.id] = delta_items, deltas
            return Segment(shard.id, shard.applied_seq, False, dirty)
        everything = dict(shard.data.items)  # a copy (in C): the shard keeps changing
        self._base_items[shard.id] = len(everything)
        self._delta_items[shard.id] = self._deltas[shard.id] = 0
        return Segment(shard.id, shard.applied_seq, True, everything)

    def _interval_s(self) -> float:
        return self._settings.checkpoint_interval_ms / 1000 * self._rng.uniform(0.9, 1.1)

    async def wait_idle(self) -> None:
        """Until no checkpoint is being written (a snapshot install replaces a shard whole)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    def replaced(self, shard: Shard, items: int) -> None:
        """A snapshot install wrote the shard's base."""
        self._base_items[shard.id] = items
        self._delta_items[shard.id] = self._deltas[shard.id] = 0

    async def _write(self, written: list[Segment], taken: list[_Taken]) -> None:
        positions = [Position(t.shard.id, t.applied_seq, t.applied_epoch) for t in taken]
        try:
            await self._store.checkpoint(written, positions)
        except Exception:
            # The store takes no more writes after a failure (fail-stop): nothing newer is
            # acknowledged, and the log keeps everything past the last checkpoint.
            log.exception("checkpoint failed")
            return
        for t in taken:  # only now may the log drop entries up to here
            t.shard.checkpoint_seq = max(t.shard.checkpoint_seq, t.applied_seq)
            t.shard.checkpoint_epoch = t.applied_epoch
