"""Counters: atomic, write-combined increments in the KV; cached reads with leases in Redis.

Each counter is ``counters/<kind>:<entity>`` in the KV. Increments of one key are combined:
while a write for the key is in flight, further deltas queue, and the next write carries their
sum — a celebrity's follower count takes one KV write per round trip, not one per follow.
A delta with an idempotency key also writes ``idem:<key>`` (with a TTL) in the counter's
partition, in the same atomic write, conditional on it being absent: a redelivered delta is
acknowledged without being applied again. If a combined write fails its condition, its deltas
are retried one by one so that only the duplicates are dropped.

Reads without ``fresh`` go through Redis with a lease-get (as in Facebook's memcache): on a
miss, one reader takes a short lease and fills the entry from the KV; the others wait for it
instead of all hitting the KV. An increment deletes the entry and the lease, so a reader that
read before the increment cannot put the old value back. Redis failing only costs speed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_core.paging import check_batch
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Check, Increment, Mutation, Put
from mt_proto import counters_pb2 as pb
from prometheus_client import Counter, Histogram
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mt_counters.settings import Settings

log = logging.getLogger(__name__)
CACHE = Counter(
    "counters_cache_total",
    "Non-fresh counter reads: hit, miss; then per miss: filled (we held the lease), "
    "lease_waited (another reader filled it), fallback (read the KV directly)",
    ["result"],
)
COMBINED = Histogram(
    "counters_combined_deltas",
    "Deltas folded into one KV write (write combining)",
    buckets=(1, 2, 5, 10, 25, 50, 100, 200, 400),
)

# Set the entry only if our lease is still there (no increment came in between).
_FILL = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""


def _name(key: pb.CounterKey) -> str:
    if key.kind == pb.COUNTER_KIND_UNSPECIFIED or not key.entity_id or len(key.entity_id) > 128:
        raise InvalidArgument("a counter key needs a kind and an entity id", code="invalid_key")
    return f"{pb.CounterKind.Name(key.kind)}:{key.entity_id}"


def _kv_key(name: str) -> Key:
    return Key("counters", name.encode())


@dataclass
class _Queued:
    # (delta, idempotency key, resolved with the counter's value after the write carrying it,
    # or None when the delta was a duplicate and not applied again)
    deltas: list[tuple[int, str, asyncio.Future[int | None]]] = field(default_factory=list)
    flushing: bool = False


class Counters:
    def __init__(self, settings: Settings, kv: KVClient, redis: Redis) -> None:
        self.settings = settings
        self.kv = kv
        self.redis = redis
        self._queues: dict[str, _Queued] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        self._fill = redis.register_script(_FILL)

    # ------------------------------------------------------------------ increments

    async def increment(
        self, deltas: Sequence[pb.CounterDelta], idempotency_key: str
    ) -> list[pb.CounterValue]:
        check_batch(deltas, "deltas", code="too_many_keys")
        summed: dict[str, int] = {}
        keys: dict[str, pb.CounterKey] = {}
        for d in deltas:
            name = _name(d.key)
            summed[name] = summed.get(name, 0) + d.delta
            keys[name] = d.key
        loop = asyncio.get_running_loop()
        waits = []
        for name, delta in summed.items():
            future: asyncio.Future[int | None] = loop.create_future()
            queue = self._queues.setdefault(name, _Queued())
            queue.deltas.append((delta, idempotency_key, future))
            if not queue.flushing:
                queue.flushing = True
                task = asyncio.create_task(self._flush(name, queue))
                self._flushes.add(task)  # held until done: the loop keeps only weak references
                task.add_done_callback(self._flushes.discard)
            waits.append(future)
        values = dict(zip(summed, await asyncio.gather(*waits), strict=True))
        # The write's own result is the value; only deltas dropped as duplicates need a read.
        unknown = [name for name, value in values.items() if value is None]
        if unknown:
            values.update(await self._from_kv(unknown))
        return [pb.CounterValue(key=keys[name], value=values[name] or 0) for name in summed]

    async def _flush(self, name: str, queue: _Queued) -> None:
        try:
            while queue.deltas:
                batch = queue.deltas[: self.settings.max_combined]
                del queue.deltas[: len(batch)]
                await self._write(name, batch)
        finally:
            queue.flushing = False
            if not queue.deltas:
                self._queues.pop(name, None)

    async def _write(
        self, name: str, batch: list[tuple[int, str, asyncio.Future[int | None]]]
    ) -> None:
        COMBINED.observe(len(batch))
        try:
            value = await self._apply(name, [(d, k) for d, k, _ in batch])
        except FailedPrecondition:
            # Some delta was a duplicate: apply them one by one, dropping only duplicates.
            for delta, key, future in batch:
                try:
                    _settle(future, await self._apply(name, [(delta, key)]))
                except FailedPrecondition:
                    _settle(future, None)  # applied earlier: acknowledged, not applied again
                except Exception as err:
                    _settle(future, err)
            await self._invalidate(name)
            return
        except Exception as err:
            for *_, future in batch:
                _settle(future, err)
            return
        for *_, future in batch:
            _settle(future, value)
        await self._invalidate(name)

    async def _apply(self, name: str, deltas: list[tuple[int, str]]) -> int:
        """One atomic write of ``deltas`` to the counter; returns its new value."""
        key = _kv_key(name)
        total, seen = 0, set()
        for delta, idem in deltas:
            if idem:
                if idem in seen:
                    continue  # the same delivery twice in one batch counts once
                seen.add(idem)
            total += delta
        mutations: list[Mutation] = [Increment(key, total)]
        checks = []
        for idem in seen:
            idem_key = Key("counters", key.partition, f"idem:{idem}".encode())
            mutations.append(Put(idem_key, b"1", ttl_ms=self.settings.idempotency_ttl_s * 1000))
            checks.append(Check.absent(idem_key))
        reply = await self.kv.write(mutations, checks)
        return int(reply.results[0].value)

    async def _invalidate(self, name: str) -> None:
        try:
            await self.redis.delete(f"c:{name}", f"lease:{name}")
        except RedisError:
            log.warning("counter cache invalidation failed", extra={"counter": name})

    # ------------------------------------------------------------------ reads

    async def get(self, keys: Sequence[pb.CounterKey], fresh: bool) -> list[pb.CounterValue]:
        check_batch(keys, "keys", code="too_many_keys")
        names = [_name(k) for k in keys]
        unique = list(dict.fromkeys(names))
        if fresh:
            values = await self._from_kv(unique)
        else:
            values = await self._cached(unique)
        return [pb.CounterValue(key=k, value=values[n]) for k, n in zip(keys, names, strict=True)]

    async def _from_kv(self, names: list[str]) -> dict[str, int]:
        found = await self.kv.multi_get([_kv_key(n) for n in names])
        return {
            n: int(item.value) if item else 0 for n, item in zip(names, found.values(), strict=True)
        }

    async def _cached(self, names: list[str]) -> dict[str, int]:
        try:
            cached = await self.redis.mget([f"c:{n}" for n in names])
        except RedisError:
            return await self._from_kv(names)
        values = {n: int(v) for n, v in zip(names, cached, strict=True) if v is not None}
        missing = [n for n in names if n not in values]
        CACHE.labels("hit").inc(len(values))
        CACHE.labels("miss").inc(len(missing))
        if missing:
            filled = await asyncio.gather(*(self._lease_get(n) for n in missing))
            values.update(zip(missing, filled, strict=True))
        return values

    async def _lease_get(self, name: str) -> int:
        token = secrets.token_hex(8)
        waited_ms = 0
        try:
            while True:
                if await self.redis.set(f"lease:{name}", token, nx=True, px=self.settings.lease_ms):
                    value = (await self._from_kv([name]))[name]
                    await self._fill(
                        keys=[f"c:{name}", f"lease:{name}"],
                        args=[token, value, self.settings.cache_ttl_ms],
                    )
                    CACHE.labels("filled").inc()
                    return value
                # Someone else is filling it: wait for their value rather than read the KV too.
                await asyncio.sleep(self.settings.lease_wait_ms / 1000)
                waited_ms += self.settings.lease_wait_ms
                cached = await self.redis.get(f"c:{name}")
                if cached is not None:
                    CACHE.labels("lease_waited").inc()
                    return int(cached)
                if waited_ms >= self.settings.lease_ms:
                    break
        except RedisError:
            pass
        CACHE.labels("fallback").inc()
        return (await self._from_kv([name]))[name]


def _settle(future: asyncio.Future[int | None], outcome: int | BaseException | None) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
