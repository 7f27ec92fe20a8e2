"""An in-memory KV with the real client's interface (:class:`~mt_kv_client.protocol.KV`), for
unit tests of the services' domain logic without processes.

It keeps the KV's contract — the same contract tests pass against it and against a real
cluster (``tests/integration/test_kv_contract.py``): versions, conditions, TTLs, counters,
scans with cursors in both directions, writes atomic within one shard (keys hash to shards as
in the real KV, so a write spanning shards is refused here too), the outbox index. Every read
is linearizable; consistency and durability options are accepted and change nothing.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence

from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_kv_contract.errors import ConditionFailed
from mt_kv_contract.keys import MAX_BATCH, OUTBOX_KEY_PREFIX, Key, microshard, validate_value
from mt_proto import kv_pb2 as pb

from mt_kv_client.client import (
    Check,
    Consistency,
    Delete,
    Durability,
    Increment,
    Item,
    Mutation,
    Put,
    _one_partition,
)

Entry = tuple[bytes, int, int]  # value, version, expires at (ms; 0: never)


def _wall_ms() -> int:
    return int(time.time() * 1000)


class MemoryKV:
    """``async with MemoryKV() as kv: await kv.put(Key(...), b"v")``."""

    def __init__(
        self, *, shards: int = 4, microshards: int = 64, now_ms: Callable[[], int] = _wall_ms
    ) -> None:
        self._shards = shards
        self._microshards = microshards
        self._now_ms = now_ms
        self._items: dict[Key, Entry] = {}
        self._seq = 0

    async def __aenter__(self) -> MemoryKV:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def shard_of(self, key: Key) -> int:
        return microshard(key.keyspace, key.partition, self._microshards) % self._shards

    def _live(self, key: Key) -> Entry | None:
        entry = self._items.get(key)
        if entry is None or (entry[2] and entry[2] <= self._now_ms()):
            return None
        return entry

    def _item(self, key: Key) -> Item | None:
        entry = self._live(key)
        return Item(key, entry[0], entry[1], entry[2]) if entry is not None else None

    # ---------------------------------------------------------------- reads

    async def get(self, key: Key, consistency: Consistency = Consistency.STRONG) -> Item | None:
        key.validate()
        return self._item(key)

    async def multi_get(
        self, keys: Iterable[Key], consistency: Consistency = Consistency.STRONG
    ) -> dict[Key, Item | None]:
        unique = list(dict.fromkeys(keys))
        for key in unique:
            key.validate()
        return {key: self._item(key) for key in unique}

    async def scan(
        self,
        keyspace: str,
        partition: bytes,
        prefix: bytes = b"",
        *,
        cursor: str = "",
        limit: int = 100,
        reverse: bool = False,
        consistency: Consistency = Consistency.STRONG,
    ) -> tuple[list[Item], str]:
        Key(keyspace, partition, prefix).validate()
        try:
            after = bytes.fromhex(cursor) if cursor else None
        except ValueError:
            raise InvalidArgument("malformed scan cursor", code="invalid_cursor") from None
        limit = min(limit or 100, MAX_BATCH)
        keys = sorted(
            k.key
            for k in self._items
            if (k.keyspace, k.partition) == (keyspace, partition) and k.key.startswith(prefix)
        )
        if reverse:
            keys.reverse()
        if after is not None:
            keys = [k for k in keys if (k < after if reverse else k > after)]
        items = [i for i in (self._item(Key(keyspace, partition, k)) for k in keys) if i]
        page = items[:limit]
        more = len(items) > limit
        return page, page[-1].key.key.hex() if more and page else ""

    async def scan_pages(
        self, keyspace: str, partition: bytes, prefix: bytes = b"", *, page_size: int = 1000
    ) -> AsyncIterator[list[Item]]:
        cursor = ""
        while True:
            items, cursor = await self.scan(
                keyspace, partition, prefix, cursor=cursor, limit=page_size
            )
            yield items
            if not cursor:
                return

    async def shards(self) -> list[int]:
        return list(range(self._shards))

    async def outbox_page(
        self, shard: int, *, cursor: str = "", limit: int = 200
    ) -> tuple[list[Key], str]:
        rows = sorted(
            k
            for k in self._items
            if k.key.startswith(OUTBOX_KEY_PREFIX) and self.shard_of(k) == shard and self._live(k)
        )
        if cursor:
            rows = [k for k in rows if _position(k) > cursor]
        page = rows[:limit]
        return page, _position(page[-1]) if len(rows) > limit else ""

    def commit_pressure(self, target_ms: float) -> Callable[[], float]:
        return lambda: 0.0

    # ---------------------------------------------------------------- writes

    async def write(
        self,
        mutations: Sequence[Mutation],
        checks: Sequence[Check] = (),
        durability: Durability = Durability.QUORUM,
    ) -> pb.WriteResponse:
        """All of ``mutations`` if every check holds, within one shard (as the real KV)."""
        keys = [m.key for m in mutations] + [c.key for c in checks]
        for key in keys:
            key.validate()
        if len({self.shard_of(k) for k in keys}) > 1:
            raise InvalidArgument(
                "a write (or transaction) must stay within one shard; use multi_put for many",
                code="cross_shard",
            )
        return self._write(mutations, checks)

    def _write(self, mutations: Sequence[Mutation], checks: Sequence[Check]) -> pb.WriteResponse:
        if not mutations:
            raise InvalidArgument("a write needs at least one mutation", code="empty_write")
        if len(mutations) + len(checks) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} mutations per write", code="batch_too_large"
            )
        for check in checks:
            self._check(check)
        version = self._seq + 1
        staged: dict[Key, Entry | None] = {}
        results = [self._effect(m, version, staged) for m in mutations]
        self._seq = version
        for key, entry in staged.items():
            if entry is None:
                self._items.pop(key, None)
            else:
                self._items[key] = entry
        shard = self.shard_of(mutations[0].key)
        return pb.WriteResponse(
            version=pb.Version(shard=shard, epoch=1, seq=version), results=results
        )

    def _check(self, check: Check) -> None:
        entry = self._live(check.key)
        if check.version is None:
            held = entry is None
        elif check.version < 0:
            held = entry is not None
        else:
            held = (entry[1] if entry is not None else 0) == check.version
        if not held:
            raise ConditionFailed(f"condition failed on {check.key}")

    def _effect(self, m: Mutation, version: int, staged: dict[Key, Entry | None]) -> pb.Item:
        current = staged[m.key] if m.key in staged else self._live(m.key)
        new: Entry | None
        if isinstance(m, Put):
            validate_value(m.value)
            new = (m.value, version, self._now_ms() + m.ttl_ms if m.ttl_ms else 0)
        elif isinstance(m, Delete):
            new = None
        else:
            try:
                base = int(current[0]) if current is not None else 0
            except ValueError:
                raise FailedPrecondition(
                    "increment of a value that is not an integer", code="not_a_counter"
                ) from None
            new = (str(base + m.delta).encode(), version, 0)
        staged[m.key] = new
        key = pb.Key(keyspace=m.key.keyspace, partition=m.key.partition, key=m.key.key)
        if new is None:
            return pb.Item(key=key, found=False, version=version)
        return pb.Item(key=key, found=True, value=new[0], version=new[1], expires_at_ms=new[2])

    async def apply(
        self, mutations: Sequence[Mutation], durability: Durability = Durability.QUORUM
    ) -> list[pb.Item]:
        _one_partition(mutations)
        return list(self._write(mutations, ()).results)

    async def apply_many(
        self, groups: Sequence[Sequence[Mutation]], durability: Durability = Durability.QUORUM
    ) -> list[list[pb.Item]]:
        for mutations in groups:
            _one_partition(mutations)
        return [list(self._write(mutations, ()).results) for mutations in groups]

    async def put(
        self, key: Key, value: bytes, *, ttl_ms: int = 0, durability: Durability = Durability.QUORUM
    ) -> int:
        return (await self.apply([Put(key, value, ttl_ms)]))[0].version

    async def put_if_absent(self, key: Key, value: bytes) -> int:
        reply = await self.write([Put(key, value)], [Check.absent(key)])
        return reply.results[0].version

    async def claim(
        self, key: Key, value: bytes, *, ttl_ms: int = 0, extra: Sequence[Mutation] = ()
    ) -> tuple[bool, Item]:
        try:
            reply = await self.write([Put(key, value, ttl_ms), *extra], [Check.absent(key)])
        except ConditionFailed:
            held = self._item(key)
            assert held is not None  # nothing runs between the check and this read here
            return False, held
        return True, Item(key, value, reply.results[0].version)

    async def delete(self, key: Key) -> None:
        await self.apply([Delete(key)])

    async def increment(self, key: Key, delta: int = 1) -> int:
        return int((await self.apply([Increment(key, delta)]))[0].value)

    async def multi_put(self, items: Iterable[tuple[Key, bytes]]) -> None:
        await self.apply_many([[Put(key, value)] for key, value in items])


def _position(key: Key) -> str:
    """An outbox page's cursor: the last row's key, comparable as a string."""
    return f"{key.keyspace.encode().hex()}.{key.partition.hex()}.{key.key.hex()}"
