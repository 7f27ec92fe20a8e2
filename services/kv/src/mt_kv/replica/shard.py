"""One shard as a replica holds it: its log tail, committed data, role and leases."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry.trace import SpanContext

from mt_kv.data import VALUE, VERSION_FLOOR, Change, Entry, KeyT, ShardData, live

# A log entry: (seq, epoch, payload), the payload the effects of one write, MessagePack-packed
# (data.encode_changes). A plain tuple, like a stored value (see data.py): the garbage
# collector stops tracking it, and a replica keeps up to ``log_retention_entries`` per shard.
LogRec = tuple[int, int, bytes]
SEQ: Final = 0
EPOCH: Final = 1
PAYLOAD: Final = 2


class Role(enum.Enum):
    NONE = "none"  # just started, or fenced without a primary
    PRIMARY = "primary"
    FOLLOWER = "follower"


@dataclass
class Waiter:
    seq: int
    future: asyncio.Future[None]
    sequenced_at: float = 0.0  # perf_counter() when a write was sequenced (0: a read waiting)


@dataclass
class Progress:
    """What a primary knows of one follower's copy of a shard's log.

    Requests are sent ahead of the answers (``next_seq`` moves on as entries are sent); an
    answer that says the follower's log does not line up rewinds ``next_seq`` and bumps
    ``gen``, so answers to requests sent before the rewind are recognised as stale. While
    ``probing`` (after a rewind, a new link, a promotion) one request at a time is out.
    """

    next_seq: int  # the next entry to send
    match_seq: int = 0  # durable on the follower and the same as ours up to here
    acked_at: float = 0.0  # when the latest request it acknowledged was sent (the lease)
    gen: int = 0
    probing: bool = True
    probe_out: bool = False
    hold_until: float = 0.0  # a probe that made no progress waits for the next tick
    last_hint: int = -1  # where the follower last said its log matches (after a refusal)


@dataclass
class Shard:
    id: int
    data: ShardData = field(default_factory=ShardData)
    epoch: int = 0
    primary: str = ""
    replicas: tuple[str, ...] = ()
    role: Role = Role.NONE
    applied_seq: int = 0
    applied_epoch: int = 0
    # Applied effects the store's items lack (key -> its value, None = deleted), and the
    # applied position the store's items reflect once the checkpoints submitted so far commit.
    dirty: dict[KeyT, Entry | None] = field(default_factory=dict)
    checkpoint_seq: int = 0
    checkpoint_epoch: int = 0
    # The log tail kept in memory (also in the store): entries tail_start .. last.
    tail: list[LogRec] = field(default_factory=list)
    tail_start: int = 1
    base_epoch: int | None = 0  # epoch of the entry just before the tail (None: unknown)
    commit_seq: int = 0
    # ---- as primary
    # Sequenced, uncommitted writes: key -> (seq, new entry or None for a delete).
    pending: dict[KeyT, tuple[int, Entry | None]] = field(default_factory=dict)
    unpersisted: list[LogRec] = field(default_factory=list)
    # Our sequenced entries' changes, as made (applying them needs no decoding of the payload).
    changes: dict[int, list[Change]] = field(default_factory=dict)
    # seq -> the span context of the traced write that sequenced it (only sampled ones), so
    # that persisting and replicating it show up in that write's trace.
    traced: dict[int, SpanContext] = field(default_factory=dict)
    local_durable_seq: int = 0
    waiters: deque[Waiter] = field(default_factory=deque)
    commit_seconds: Any = None  # this shard's child of the commit-latency histogram, once used
    progress: dict[str, Progress] = field(default_factory=dict)  # follower -> its progress
    lease_until: float = 0.0
    serving_after: float = 0.0
    epoch_start_seq: int = 0  # our first entry as primary of this epoch
    # The keyspace hash's μshard count once a fence was sequenced here (a μshard moving away,
    # see data.MOVED): until it is applied, writes look for fences among pending entries too.
    move_hint: int = 0
    store_floor: int = 0  # the store's log is trimmed up to here
    # ---- as follower
    last_ack_at: float = 0.0  # when we last acknowledged a primary (our lease promise)
    last_ack_primary: str = ""
    fresh_at: float = 0.0  # when we were last caught up with the primary's commit point
    snapshotting: bool = False

    @property
    def last_seq(self) -> int:
        return self.tail[-1][SEQ] if self.tail else self.tail_start - 1

    @property
    def last_epoch(self) -> int:
        if self.tail:
            return self.tail[-1][EPOCH]
        return self.base_epoch or 0

    def entry(self, seq: int) -> LogRec | None:
        index = seq - self.tail_start
        return self.tail[index] if 0 <= index < len(self.tail) else None

    def epoch_at(self, seq: int) -> int | None:
        """The epoch of the entry at ``seq`` if known (0 for the empty prefix)."""
        if seq == 0 and self.tail_start == 1:
            return 0
        found = self.entry(seq)
        if found is not None:
            return found[EPOCH]
        if seq == self.tail_start - 1:
            return self.base_epoch
        if seq == self.applied_seq:
            return self.applied_epoch
        return None

    def append(self, entry: LogRec) -> None:
        assert entry[SEQ] == self.last_seq + 1, (entry[SEQ], self.last_seq)
        self.tail.append(entry)

    def reset(self, seq: int, epoch: int) -> None:
        """An empty log positioned after ``seq`` (a snapshot install)."""
        self.tail, self.tail_start, self.base_epoch = [], seq + 1, epoch

    def truncate_after(self, seq: int) -> None:
        """Drop log entries after ``seq`` (never committed ones)."""
        assert seq >= self.applied_seq, (seq, self.applied_seq)
        del self.tail[max(0, seq - self.tail_start + 1) :]

    def trim(self, keep_entries: int) -> int:
        """Forget the oldest applied entries beyond ``keep_entries``; returns the new floor."""
        excess = min(len(self.tail) - keep_entries, self.applied_seq - self.tail_start + 1)
        if excess > 0:
            self.base_epoch = self.tail[excess - 1][EPOCH]
            del self.tail[:excess]
            self.tail_start += excess
        return self.tail_start - 1

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
