"""A shard's committed state in memory: a sorted map, so gets are a lookup and prefix scans a
range walk. The store on disk is the durable copy; this is what reads are served from."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass

from mt_proto import kv_pb2 as pb
from sortedcontainers import SortedDict

KeyT = tuple[str, bytes, bytes]


@dataclass(frozen=True, slots=True)
class Entry:
    value: bytes
    version: int
    expires_at_ms: int = 0

    def live(self, now_ms: int) -> bool:
        return self.expires_at_ms == 0 or self.expires_at_ms > now_ms


def key_of(key: pb.Key) -> KeyT:
    return (key.keyspace, key.partition, key.key)


def _prefix_end(keyspace: str, partition: bytes, prefix: bytes) -> KeyT:
    """The smallest key greater than every key of ``partition`` starting with ``prefix``."""
    stripped = prefix.rstrip(b"\xff")
    if stripped:
        return (keyspace, partition, stripped[:-1] + bytes([stripped[-1] + 1]))
    return (keyspace, partition + b"\x00", b"")


class ShardData:
    def __init__(self) -> None:
        self.items: SortedDict = SortedDict()
        self._expiries: list[tuple[int, KeyT]] = []  # a heap; stale entries are skipped

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: KeyT, now_ms: int) -> Entry | None:
        entry: Entry | None = self.items.get(key)
        return entry if entry is not None and entry.live(now_ms) else None

    def apply(self, effects: Iterable[pb.Item]) -> None:
        for item in effects:
            key = key_of(item.key)
            if item.found:
                self.items[key] = Entry(item.value, item.version, item.expires_at_ms)
                if item.expires_at_ms:
                    heapq.heappush(self._expiries, (item.expires_at_ms, key))
            else:
                self.items.pop(key, None)

    def replace(self, entries: Iterable[tuple[KeyT, Entry]]) -> None:
        self.items = SortedDict()
        self._expiries = []
        for key, entry in entries:
            self.items[key] = entry
            if entry.expires_at_ms:
                heapq.heappush(self._expiries, (entry.expires_at_ms, key))

    def expired(self, now_ms: int, limit: int) -> list[tuple[KeyT, Entry]]:
        """Keys whose TTL passed (still present), at most ``limit``: the primary deletes them
        through the log so every replica drops them at the same point."""
        out: list[tuple[KeyT, Entry]] = []
        while self._expiries and self._expiries[0][0] <= now_ms and len(out) < limit:
            at, key = heapq.heappop(self._expiries)
            entry: Entry | None = self.items.get(key)
            if entry is not None and entry.expires_at_ms == at:
                out.append((key, entry))
        return out

    def scan(
        self,
        keyspace: str,
        partition: bytes,
        prefix: bytes,
        after: bytes | None,
        limit: int,
        reverse: bool,
        now_ms: int,
    ) -> tuple[list[tuple[KeyT, Entry]], bool]:
        """Up to ``limit`` live entries of one partition with ``prefix``, after the cursor key;
        and whether more remain."""
        low: KeyT = (keyspace, partition, prefix)
        high = _prefix_end(keyspace, partition, prefix)
        if after is not None:
            if reverse:
                high = (keyspace, partition, after)
            else:
                low = (keyspace, partition, after)
        inclusive = (after is None, False) if not reverse else (True, False)
        keys = self.items.irange(low, high, inclusive=inclusive, reverse=reverse)
        out: list[tuple[KeyT, Entry]] = []
        for key in keys:
            if not reverse and after is not None and key[2] == after:
                continue
            entry: Entry = self.items[key]
            if not entry.live(now_ms):
                continue
            if len(out) == limit:
                return out, True
            out.append((key, entry))
        return out, False
