"""One shard as a replica holds it: its replication state and rules (:class:`ShardCore`), and
what the replica keeps beside them — the committed data, the writes sequenced and not yet
committed, the writers waiting, the checkpoint's position."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanContext

from mt_kv.data import VALUE, VERSION_FLOOR, Change, Entry, KeyT, ShardData, live
from mt_kv.rules.shard import ShardCore


@dataclass
class Waiter:
    seq: int
    future: asyncio.Future[None]
    sequenced_at: float = 0.0  # perf_counter() when a write was sequenced (0: a read waiting)


@dataclass(eq=False)
class Shard(ShardCore):
    data: ShardData = field(default_factory=ShardData)
    # Applied effects the store's items lack (key -> its value, None = deleted), and the
    # applied position the store's items reflect once the checkpoints submitted so far commit.
    dirty: dict[KeyT, Entry | None] = field(default_factory=dict)
    checkpoint_seq: int = 0
    checkpoint_epoch: int = 0
    # ---- as primary
    # Sequenced, uncommitted writes: key -> (seq, new entry or None for a delete).
    pending: dict[KeyT, tuple[int, Entry | None]] = field(default_factory=dict)
    # Our sequenced entries' changes, as made (applying them needs no decoding of the payload).
    changes: dict[int, list[Change]] = field(default_factory=dict)
    # seq -> the span context of the traced write that sequenced it (only sampled ones), so
    # that persisting and replicating it show up in that write's trace.
    traced: dict[int, SpanContext] = field(default_factory=dict)
    waiters: deque[Waiter] = field(default_factory=deque)
    commit_seconds: Any = None  # this shard's child of the commit-latency histogram, once used
    # The keyspace hash's μshard count once a fence was sequenced here (a μshard moving away,
    # see data.MOVED): until it is applied, writes look for fences among pending entries too.
    move_hint: int = 0
    store_floor: int = 0  # the store's log is trimmed up to here

    def version_floor(self) -> int:
        """What new versions here start above (data.VERSION_FLOOR), as of everything
        sequenced."""
        floor = self.view(VERSION_FLOOR, 0)
        return int(floor[VALUE]) if floor is not None else 0

    def view(self, key: KeyT, now_ms: int) -> Entry | None:
        """The value a new write must see: pending (sequenced) writes over committed data."""
        if key in self.pending:
            pending = self.pending[key][1]
            return pending if pending is not None and live(pending, now_ms) else None
        return self.data.get(key, now_ms)
