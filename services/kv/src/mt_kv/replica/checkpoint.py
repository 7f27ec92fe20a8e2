"""Checkpoints: applied effects reach the store's items table in the background.

A write is durable once its log entry is (the log is written before anything is
acknowledged); the items table is what a restart loads so it need not replay the whole log.
So the replica keeps, per shard, the keys changed since the last checkpoint (``Shard.dirty``,
each key's latest value) and writes them every ``checkpoint_interval_ms`` (or sooner once
``checkpoint_max_keys`` wait) — far cheaper per row than an upsert per key in every small
transaction of the write path, and a key written many times is written once.

A checkpoint goes to the store's items (a database of their own: the write path's log
transactions never wait for it) in chunks of ``checkpoint_chunk_keys`` rows, each its own
transaction, so no single one holds the items' writer (and the GIL, between its rows) long.
The last chunk carries each shard's applied position, so a crash between chunks leaves items
newer than that position — harmless: the log still holds every entry past it (trims never
pass a committed checkpoint's position) and applying an entry again gives the same value.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from mt_kv.data import Entry, KeyT
from mt_kv.replica.shard import Shard
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import ItemRow, Position, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Taken:
    shard: Shard
    changes: dict[KeyT, Entry | None]
    applied_seq: int
    applied_epoch: int


class Checkpointer:
    def __init__(self, settings: ReplicaSettings, store: Store, shards: dict[int, Shard]) -> None:
        self._settings = settings
        self._store = store
        self._shards = shards
        self._task: asyncio.Task[None] | None = None
        # Replicas started together would checkpoint together, a burst of CPU on the whole box
        # every interval (puts' p99 showed it): each starts at a random point of its interval,
        # and every interval varies a little, so they drift apart.
        self._next_at = time.monotonic() + self._interval_s() * random.random()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def maybe_start(self, now: float) -> None:
        """Start a checkpoint if one is due and none is running."""
        if self.running:
            return
        waiting = sum(len(s.dirty) for s in self._shards.values())
        if not waiting or not (
            now >= self._next_at or waiting >= self._settings.checkpoint_max_keys
        ):
            return
        taken = []
        for shard in self._shards.values():
            if shard.dirty and not shard.snapshotting:
                taken.append(_Taken(shard, shard.dirty, shard.applied_seq, shard.applied_epoch))
                shard.dirty = {}
        self._next_at = now + self._interval_s()
        self._task = asyncio.create_task(self._write(taken), name="kv-checkpoint")

    def _interval_s(self) -> float:
        return self._settings.checkpoint_interval_ms / 1000 * random.uniform(0.9, 1.1)

    async def wait_idle(self) -> None:
        """Until no checkpoint is being written (a snapshot install replaces a shard whole)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def _write(self, taken: list[_Taken]) -> None:
        size = max(1, self._settings.checkpoint_chunk_keys)
        # Rows are made a chunk at a time, on the event loop between the chunks' transactions:
        # all at once, a few thousand of them stalled every request for milliseconds.
        changes = ((t.shard.id, key, entry) for t in taken for key, entry in t.changes.items())
        try:
            chunk = _rows(changes, size)
            while following := _rows(changes, size):
                await self._store.checkpoint(chunk, [])
                chunk = following
            positions = [Position(t.shard.id, t.applied_seq, t.applied_epoch) for t in taken]
            await self._store.checkpoint(chunk, positions)
        except Exception:
            # The store takes no more writes after a failure (fail-stop): nothing newer is
            # acknowledged, and the log keeps everything past the last checkpoint.
            log.exception("checkpoint failed")
            return
        for t in taken:  # only now may the log drop entries up to here
            t.shard.checkpoint_seq = max(t.shard.checkpoint_seq, t.applied_seq)
            t.shard.checkpoint_epoch = t.applied_epoch


def _rows(changes: Iterator[tuple[int, KeyT, Entry | None]], count: int) -> list[ItemRow]:
    return [
        ItemRow(shard, *key, None, 0, 0) if entry is None else ItemRow(shard, *key, *entry)
        for shard, key, entry in itertools.islice(changes, count)
    ]
