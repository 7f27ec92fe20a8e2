"""A replica's store in the simulation: the real one's interface (:class:`~mt_kv.storage.store.
Durable`) over a :class:`Disk` that outlives the replica's crashes. A transaction takes a
drawn time to sync, and what was queued meanwhile shares the next one (group commit); a crash
loses every transaction not yet synced — the only thing a crash may lose."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from mt_kv.data import Entry, KeyT
from mt_kv.storage.store import Batch, Loaded, LogRow, Position, Segment, ShardMeta

from mt_kv_sim.loop import SimLoop


@dataclass
class Disk:
    """What one replica's store holds durably."""

    log: dict[int, dict[int, tuple[int, bytes]]] = field(default_factory=dict)  # shard->seq->
    epochs: dict[int, tuple[int, str]] = field(default_factory=dict)
    items: dict[int, dict[KeyT, Entry]] = field(default_factory=dict)
    positions: dict[int, tuple[int, int]] = field(default_factory=dict)
    slow_until: float = 0.0  # a slow disk: syncs x20 until then

    def apply(self, batch: Batch) -> None:
        for shard, after in batch.log_truncate_after.items():
            held = self.log.get(shard, {})
            for seq in [s for s in held if s > after]:
                del held[seq]
        for shard, upto in batch.log_trim_upto.items():
            held = self.log.get(shard, {})
            for seq in [s for s in held if s <= upto]:
                del held[seq]
        for row in batch.log_appends:
            self.log.setdefault(row.shard, {})[row.seq] = (row.epoch, row.payload)
        for shard, epoch_row in batch.epochs.items():
            self.epochs[shard] = (epoch_row.epoch, epoch_row.primary)
        for shard in batch.dropped:
            self.log.pop(shard, None)
            self.epochs.pop(shard, None)

    def write_segments(self, written: Sequence[Segment], positions: Sequence[Position]) -> None:
        for segment in written:
            held = {} if segment.base else self.items.setdefault(segment.shard, {})
            for key, entry in segment.items.items():
                if entry is None:
                    held.pop(key, None)
                else:
                    held[key] = entry
            self.items[segment.shard] = held
        for position in positions:
            self.positions[position.shard] = (position.applied_seq, position.applied_epoch)


class SimStore:
    def __init__(
        self,
        loop: SimLoop,
        disk: Disk,
        on_synced: Callable[[Batch], None] = lambda batch: None,
    ) -> None:
        self._loop = loop
        self._disk = disk
        self._on_synced = on_synced
        self._queue: list[tuple[tuple[Batch, ...], asyncio.Future[None]]] = []
        self._syncing = False

    def _sync_s(self) -> float:
        took = self._loop.rng.uniform(0.0003, 0.003)
        return took * 20 if self._loop.now < self._disk.slow_until else took

    async def load(self) -> Loaded:
        disk = self._disk
        metas = {
            shard: ShardMeta(
                shard, *disk.epochs.get(shard, (0, "")), *disk.positions.get(shard, (0, 0))
            )
            for shard in sorted(disk.epochs.keys() | disk.positions.keys())
        }
        rows = [
            LogRow(shard, seq, epoch, payload)
            for shard in sorted(disk.log)
            for seq, (epoch, payload) in sorted(disk.log[shard].items())
        ]
        items = {shard: dict(held) for shard, held in disk.items.items()}
        return Loaded(metas, items, rows)

    def submit(self, *batches: Batch) -> asyncio.Future[None]:
        future: asyncio.Future[None] = self._loop.create_future()
        batches = tuple(b for b in batches if not b.empty())
        if not batches and not self._queue and not self._syncing:
            future.set_result(None)  # (as the real store: nothing on its way)
            return future
        self._queue.append((batches, future))
        if not self._syncing:
            self._start_sync()
        return future

    def _start_sync(self) -> None:
        queued, self._queue = self._queue, []
        self._syncing = True
        self._loop.call_later(self._sync_s(), self._synced, queued)

    def _synced(self, queued: list[tuple[tuple[Batch, ...], asyncio.Future[None]]]) -> None:
        # (Never runs if the replica died first: the sim loop drops a dead process's timers.)
        for batches, _ in queued:
            for batch in batches:
                self._disk.apply(batch)
                self._on_synced(batch)
        for _, future in queued:
            if not future.done():
                future.set_result(None)
        self._syncing = False
        if self._queue:
            self._start_sync()

    async def commit(self, *batches: Batch) -> None:
        await asyncio.shield(self.submit(*batches))

    async def checkpoint(self, written: Sequence[Segment], positions: Sequence[Position]) -> None:
        await asyncio.sleep(self._sync_s())
        self._disk.write_segments(written, positions)

    async def replace_shard(
        self, shard: int, items: Mapping[KeyT, Entry | None], position: Position
    ) -> None:
        await self.checkpoint([Segment(shard, position.applied_seq, True, items)], [position])

    async def drop_shard(self, shard: int) -> None:
        await self.commit(Batch(dropped={shard}))
        await asyncio.sleep(self._sync_s())
        self._disk.items.pop(shard, None)
        self._disk.positions.pop(shard, None)
