"""Checkpoints: applied effects reach the store's items table in the background.

A write is durable once its log entry is (the log is written before anything is
acknowledged); the items table is what a restart loads so it need not replay the whole log.
So the replica keeps, per shard, the keys changed since the last checkpoint (``Shard.dirty``,
each key's latest value) and writes them every ``checkpoint_interval_ms`` (or sooner once
``checkpoint_max_keys`` wait) — far cheaper per row than an upsert per key in every small
transaction of the write path, and a key written many times is written once.

A checkpoint goes to the store in chunks of ``checkpoint_chunk_keys`` rows, each its own
transaction, so the write path's transactions (queued behind it on the store's one writer)
wait for one chunk at a time rather than for the whole checkpoint: one transaction of a few
thousand random-key upserts held puts back for tens of milliseconds (their p99 doubled). The
last chunk carries each shard's applied position, so a crash between chunks leaves items newer
than that position — harmless: the log still holds every entry past it (trims never pass a
checkpoint's position) and applying an entry again gives the same value.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from mt_kv.data import Entry, KeyT
from mt_kv.replica.shard import Shard
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Batch, ItemRow, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Taken:
    shard: Shard
    changes: dict[KeyT, Entry | None]
    applied_seq: int
    applied_epoch: int


class Checkpointer:
    def __init__(
        self,
        settings: ReplicaSettings,
        store: Store,
        shards: dict[int, Shard],
        take_metadata: Callable[[Batch], None],
        mark_meta: Callable[[Shard], None],
    ) -> None:
        self._settings = settings
        self._store = store
        self._shards = shards
        self._take_metadata = take_metadata  # shard metadata and log trims, into a batch
        self._mark_meta = mark_meta  # the shard's metadata must be written again
        self._task: asyncio.Task[None] | None = None
        self._last_at = 0.0

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def maybe_start(self, now: float) -> None:
        """Start a checkpoint if one is due and none is running."""
        if self.running:
            return
        waiting = sum(len(s.dirty) for s in self._shards.values())
        due = now - self._last_at >= self._settings.checkpoint_interval_ms / 1000
        if not waiting or not (due or waiting >= self._settings.checkpoint_max_keys):
            return
        taken = []
        for shard in self._shards.values():
            if shard.dirty and not shard.snapshotting:
                taken.append(_Taken(shard, shard.dirty, shard.applied_seq, shard.applied_epoch))
                shard.dirty = {}
        self._last_at = now
        self._task = asyncio.create_task(self._write(taken), name="kv-checkpoint")

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
            while True:
                following = _rows(changes, size)
                if not following:
                    break
                await self._store.commit(Batch(item_writes=chunk))
                chunk = following
            last = Batch(item_writes=chunk)
            for t in taken:
                t.shard.checkpoint_seq = t.applied_seq
                t.shard.checkpoint_epoch = t.applied_epoch
                self._mark_meta(t.shard)
            self._take_metadata(last)
            # Queued now, before anything else can take the metadata: later transactions
            # (which carry these positions too) commit after it.
            await self._store.commit(last)
        except Exception:
            # The store refuses every later write too (it stays failed), so nothing newer can
            # be acknowledged on top of a checkpoint that is not there.
            log.exception("checkpoint failed")


def _rows(changes: Iterator[tuple[int, KeyT, Entry | None]], count: int) -> list[ItemRow]:
    return [
        ItemRow(shard, *key, None, 0, 0)
        if entry is None
        else ItemRow(shard, *key, entry.value, entry.version, entry.expires_at_ms)
        for shard, key, entry in itertools.islice(changes, count)
    ]
