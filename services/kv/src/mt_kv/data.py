"""A shard's committed state in memory: a hash map, so gets and writes are a lookup, plus a
sorted index of each partition's keys that a prefix scan has asked for, so scans are a range
walk. The store on disk is the durable copy; this is what reads are served from.

Why not one sorted map of everything: keeping every write's key in order cost ~9% of a
replica's CPU under the put benchmark, for scans that only ever look inside one partition.

What a replica holds per key is kept out of the garbage collector's sight: a value is a plain
tuple (the collector stops tracking tuples of bytes and ints; it tracks every instance of a
class, slotted or not), and a partition with one key indexes it as bare bytes, not a set. With a
class per value and a set per partition, every young collection walked the new keys and full
collections walked them all: 20-90 ms pauses once a replica held ~100k keys.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Final

import msgpack
from mt_kv_contract.keys import OUTBOX_KEY_PREFIX
from mt_proto import kv_pb2 as pb
from sortedcontainers import SortedList

KeyT = tuple[str, bytes, bytes]
PartitionT = tuple[str, bytes]
Change = tuple[KeyT, "Entry | None"]  # a key's new value; None deletes it


Entry = tuple[bytes, int, int]  # a key's value: (value, version, expires_at_ms); 0 = no TTL
VALUE: Final = 0
VERSION: Final = 1
EXPIRES: Final = 2

# Keys the KV keeps for itself in a shard's data, so they are logged, replicated, checkpointed
# and snapshotted like any other (no client can name this keyspace: keyspaces are validated).
META_KEYSPACE: Final = "\x00kv"
# A μshard that left this shard: key (META_KEYSPACE, MOVED, μshard as 4 bytes big-endian),
# value b"<to shard>/<μshards in the keyspace hash>". Its keys are refused from then on.
MOVED: Final = b"moved"
# Versions of new writes are the seq plus this (a decimal value), raised when a μshard's keys
# arrive with the versions they had in another shard: a version stays unique per key.
VERSION_FLOOR: Final[KeyT] = (META_KEYSPACE, b"version_floor", b"")


# The shard's outbox index: key (META_KEYSPACE, OUTBOX, the job row's key packed), value empty.
# Kept by the primary in the same entry as the row it lists (with_outbox_index), so it is as
# durable as the row; μshard moves carry the rows, and the index follows them (both the
# import and the purge go through the same rule).
OUTBOX: Final = b"outbox"


def moved_key(microshard: int) -> KeyT:
    return (META_KEYSPACE, MOVED, microshard.to_bytes(4, "big"))


def moved_value(to_shard: int, microshards: int) -> bytes:
    return f"{to_shard}/{microshards}".encode()


def outbox_index_key(key: KeyT) -> KeyT:
    return (META_KEYSPACE, OUTBOX, msgpack.packb(key, use_bin_type=True))


def outbox_row_of(index_key: bytes) -> KeyT:
    keyspace, partition, key = msgpack.unpackb(index_key, raw=False)
    return (keyspace, partition, key)


def with_outbox_index(changes: list[Change]) -> list[Change]:
    """``changes`` plus the outbox index's change for each job row among them."""
    listed: list[Change] = []
    for key, new in changes:
        if key[2].startswith(OUTBOX_KEY_PREFIX) and key[0] != META_KEYSPACE:
            listed.append((outbox_index_key(key), None if new is None else (b"", new[1], 0)))
    return changes + listed if listed else changes


def live(entry: Entry, now_ms: int) -> bool:
    expires = entry[EXPIRES]
    return expires == 0 or expires > now_ms


def key_of(key: pb.Key) -> KeyT:
    return (key.keyspace, key.partition, key.key)


def encode_changes(changes: Iterable[Change]) -> bytes:
    """A log entry's payload: a MessagePack array of [keyspace, partition, key, value, version,
    expires_at_ms] arrays, value nil for a delete (see LogEntry in kv.proto). One C call, where
    building and encoding a LogPayload message took an Item per change."""
    return msgpack.packb(  # type: ignore[no-any-return]
        [(*key, *entry) if entry is not None else (*key, None, 0, 0) for key, entry in changes]
    )


def decode_effects(payload: bytes) -> list[Change]:
    """A log entry's payload as the changes it makes. Entries logged before payloads were
    MessagePack hold an encoded LogPayload (a protobuf message: its first byte, 0x0a, starts
    no MessagePack array; an empty one is empty)."""
    if payload and payload[0] != 0x0A:
        return [
            ((ks, partition, key), (value, version, expires) if value is not None else None)
            for ks, partition, key, value, version, expires in msgpack.unpackb(
                payload, use_list=False
            )
        ]
    changes: list[Change] = []
    for item in pb.LogPayload.FromString(payload).effects:
        k = item.key
        key = (k.keyspace, k.partition, k.key)
        if item.found:
            changes.append((key, (item.value, item.version, item.expires_at_ms)))
        else:
            changes.append((key, None))
    return changes


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if stripped:
        return stripped[:-1] + bytes([stripped[-1] + 1])
    return None


class ShardData:
    def __init__(self) -> None:
        self.items: dict[KeyT, Entry] = {}
        # The keys of each partition; sorted for the partitions a scan has asked for (kept up
        # to date from then on), a plain set for the others, bare bytes for a single key.
        self._keys: dict[PartitionT, bytes | set[bytes] | SortedList] = {}
        self._expiries: list[tuple[int, KeyT]] = []  # a heap; stale entries are skipped
        # μshards that moved away (their fences, see MOVED), and the μshard count of the
        # keyspace hash they were given with (0 until a μshard has moved away).
        self.moved: set[int] = set()
        self.microshards = 0
        self.bytes: dict[str, int] = {}  # keyspace -> bytes stored (partitions, keys, values)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, key: KeyT, now_ms: int) -> Entry | None:
        entry = self.items.get(key)
        return entry if entry is not None and live(entry, now_ms) else None

    def apply(self, changes: Iterable[Change]) -> None:
        for key, entry in changes:
            if entry is not None:
                self._set(key, entry)
            else:
                self._delete(key)

    def _set(self, key: KeyT, entry: Entry) -> None:
        old = self.items.get(key)
        if old is not None:
            grown = len(entry[VALUE]) - len(old[VALUE])
        else:
            grown = len(key[1]) + len(key[2]) + len(entry[VALUE])
            partition = key[:2]
            keys = self._keys.get(partition)
            if keys is None:
                self._keys[partition] = key[2]
            elif isinstance(keys, bytes):
                self._keys[partition] = {keys, key[2]}
            else:
                keys.add(key[2])
        self.items[key] = entry
        if grown:
            self.bytes[key[0]] = self.bytes.get(key[0], 0) + grown
        if entry[EXPIRES]:
            heapq.heappush(self._expiries, (entry[EXPIRES], key))
        if key[0] == META_KEYSPACE and key[1] == MOVED:
            self.moved.add(int.from_bytes(key[2], "big"))
            self.microshards = int(entry[VALUE].split(b"/")[1])

    def _delete(self, key: KeyT) -> None:
        old = self.items.pop(key, None)
        if old is None:
            return
        self.bytes[key[0]] -= len(key[1]) + len(key[2]) + len(old[VALUE])
        if key[0] == META_KEYSPACE and key[1] == MOVED:
            self.moved.discard(int.from_bytes(key[2], "big"))
        partition = key[:2]
        keys = self._keys[partition]
        if isinstance(keys, bytes):
            del self._keys[partition]
            return
        keys.discard(key[2])
        if not keys:
            del self._keys[partition]

    def replace(self, entries: Iterable[tuple[KeyT, Entry]]) -> None:
        self.items, self._keys, self._expiries = {}, {}, []
        self.moved, self.microshards, self.bytes = set(), 0, {}
        for key, entry in entries:
            self._set(key, entry)

    def expired(self, now_ms: int, limit: int) -> list[tuple[KeyT, Entry]]:
        """Keys whose TTL passed (still present), at most ``limit``: the primary deletes them
        through the log so every replica drops them at the same point."""
        out: list[tuple[KeyT, Entry]] = []
        while self._expiries and self._expiries[0][0] <= now_ms and len(out) < limit:
            at, key = heapq.heappop(self._expiries)
            entry = self.items.get(key)
            if entry is not None and entry[EXPIRES] == at:
                out.append((key, entry))
        return out

    def partitions(self) -> list[PartitionT]:
        """Every partition holding keys, the KV's own excepted (a copy: safe to walk while
        the data changes)."""
        return [p for p in self._keys if p[0] != META_KEYSPACE]

    def partition_items(self, partition: PartitionT, now_ms: int) -> list[tuple[KeyT, Entry]]:
        """The live entries of one partition (none if it has gone meanwhile)."""
        keys = self._keys.get(partition)
        if keys is None:
            return []
        names = (keys,) if isinstance(keys, bytes) else list(keys)
        out: list[tuple[KeyT, Entry]] = []
        for name in names:
            key = (partition[0], partition[1], name)
            entry = self.items[key]
            if live(entry, now_ms):
                out.append((key, entry))
        return out

    def _sorted(self, partition: PartitionT) -> SortedList | None:
        keys = self._keys.get(partition)
        if isinstance(keys, bytes):
            keys = self._keys[partition] = SortedList([keys])
        elif isinstance(keys, set):
            keys = self._keys[partition] = SortedList(keys)
        return keys

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
        keys = self._sorted((keyspace, partition))
        if keys is None:
            return [], False
        low: bytes | None = prefix
        high = _prefix_end(prefix)
        if after is not None:
            if reverse:
                high = after
            else:
                low = after
        inclusive = (after is None, False) if not reverse else (True, False)
        out: list[tuple[KeyT, Entry]] = []
        for k in keys.irange(low, high, inclusive=inclusive, reverse=reverse):
            if not reverse and after is not None and k == after:
                continue
            key = (keyspace, partition, k)
            entry = self.items[key]
            if not live(entry, now_ms):
                continue
            if len(out) == limit:
                return out, True
            out.append((key, entry))
        return out, False
