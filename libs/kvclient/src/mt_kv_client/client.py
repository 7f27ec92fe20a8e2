"""The async KV client: routes by the shard manager's table, batches per shard, retries only
where that is safe, and keeps version tokens per session for read-your-writes.

Retry rules (the contract's one rule, ``mt_kv_contract.errors.next_step``): a request a
replica *refused* (``Refused``: not primary, stale epoch, behind...) did nothing, so it is sent
again after refreshing the routing table; one refused as ``Moved`` is routed again. A
write whose outcome is unknown (the primary died after sequencing it, or the connection broke
mid-call) is sent again exactly as it was — same session, same number — to the shard's primary
of now, which answers with the first outcome if the first attempt took effect (see "Repeats"
below). Only a fast-ack write, which has no session, or one whose repeats ran out of time,
reaches the caller as :class:`~mt_kv_contract.errors.Indeterminate`. Reads are retried freely.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import time
from collections import defaultdict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Hashable,
    Iterable,
    Mapping,
    Sequence,
    Sized,
)
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, overload

import grpc
from mt_core.errors import (
    ERROR_CLASSES,
    Internal,
    InvalidArgument,
    MinithreadsError,
    RateLimited,
    Unavailable,
)
from mt_core.rpc import deadline
from mt_core.rpc.client import RECONNECT_OPTIONS, untraced_channel
from mt_core.rpc.status import error_from_rpc
from mt_core.telemetry import event, outbound
from mt_kv_contract.errors import (
    ConditionFailed,
    Indeterminate,
    KVUnavailable,
    Moved,
    NotPrimary,
    OverQuota,
    Refused,
    Step,
    next_step,
)
from mt_kv_contract.keys import MAX_BATCH, Key, microshard, validate_value
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv_client.holds import Holds
from mt_kv_client.sessions import WriteSession

T = TypeVar("T")

log = logging.getLogger(__name__)

# Repeats: a write repeated after an unknown outcome (a timeout, a primary lost mid-write)
# carries the session and number of its first attempt: if that attempt did happen, a blind
# repeat would land a second time — possibly after another client's later write, bringing the
# old value back (the chaos suite's checker caught exactly that, before sessions). The
# primary's record of the first outcome (mt_kv.rules.sessions) answers the repeat instead.
# A fast-ack write has no record and is not repeated. Refusals are retried: nothing was done.


def _given_up(error: MinithreadsError) -> MinithreadsError:
    """What the caller gets when the retry budget runs out on ``error``."""
    return KVUnavailable(error.message) if isinstance(error, Refused) else error


_KV = "/minithreads.kv.v1.KV/"
_GET, _SCAN, _WRITE = _KV + "Get", _KV + "Scan", _KV + "Write"
_BATCH_GET, _BATCH_WRITE = _KV + "BatchGet", _KV + "BatchWrite"


class Consistency(enum.IntEnum):
    STRONG = pb.STRONG
    STALE = pb.BOUNDED_STALENESS
    RYW = pb.READ_YOUR_WRITES


class Durability(enum.IntEnum):
    QUORUM = pb.QUORUM
    FAST_ACK = pb.FAST_ACK


@dataclass(frozen=True)
class Item:
    key: Key
    value: bytes
    version: int
    expires_at_ms: int = 0


@dataclass
class Session:
    """Version tokens of one client's writes, per shard: reads with RYW see at least these."""

    tokens: dict[int, pb.Version] = field(default_factory=dict)

    def observe(self, version: pb.Version) -> None:
        held = self.tokens.get(version.shard)
        if held is None or version.seq > held.seq:
            self.tokens[version.shard] = version


@dataclass(frozen=True)
class Put:
    key: Key
    value: bytes
    ttl_ms: int = 0


@dataclass(frozen=True)
class Delete:
    key: Key


@dataclass(frozen=True)
class Increment:
    key: Key
    delta: int


Mutation = Put | Delete | Increment


@dataclass(frozen=True)
class Check:
    """A condition: ``version`` None = the key must be absent, -1 = present, else equal."""

    key: Key
    version: int | None

    @staticmethod
    def absent(key: Key) -> Check:
        return Check(key, None)

    @staticmethod
    def present(key: Key) -> Check:
        return Check(key, -1)


def _pb_key(key: Key) -> pb.Key:
    """(Validated where the key came in: every public call checks its keys first.)"""
    return pb.Key(keyspace=key.keyspace, partition=key.partition, key=key.key)


def _pb_mutation(m: Mutation) -> pb.Mutation:
    if isinstance(m, Put):
        validate_value(m.value)
        return pb.Mutation(key=_pb_key(m.key), put=pb.Mutation.Put(value=m.value, ttl_ms=m.ttl_ms))
    if isinstance(m, Delete):
        return pb.Mutation(key=_pb_key(m.key), delete=pb.Mutation.Delete())
    return pb.Mutation(key=_pb_key(m.key), increment=pb.Mutation.Increment(delta=m.delta))


def _pb_condition(c: Check) -> pb.Condition:
    if c.version is None:
        return pb.Condition(key=_pb_key(c.key), kind=pb.Condition.ABSENT)
    if c.version < 0:
        return pb.Condition(key=_pb_key(c.key), kind=pb.Condition.PRESENT)
    return pb.Condition(key=_pb_key(c.key), kind=pb.Condition.VERSION_EQUALS, version=c.version)


@dataclass(frozen=True)
class _Conditional:
    """A write with conditions (or several mutations) of one caller: it rides in a coalesced
    BatchWrite as a write of its own, so its meaning — all or nothing, only if its checks
    hold — is unchanged by the company it keeps."""

    shard: int
    mutations: tuple[Mutation, ...]
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class _Unconditional:
    """Unconditional writes of one caller, each the mutations of one partition (``parts``:
    shard, mutations), merged with every other bound for the same shard: one write per shard
    per BatchWrite, whoever asked."""

    parts: tuple[tuple[int, tuple[Mutation, ...]], ...]


P = TypeVar("P")
G = TypeVar("G", bound=Hashable)


def _by_shard(calls: Iterable[tuple[G, P]]) -> dict[G, list[P]]:
    """Coalesced calls grouped by shard (or by shard and keyspace), each group in order."""
    grouped: dict[G, list[P]] = defaultdict(list)
    for shard, payload in calls:
        grouped[shard].append(payload)
    return grouped


def _from_pb(item: pb.Item) -> Item | None:
    if not item.found:
        return None
    key = Key(item.key.keyspace, item.key.partition, item.key.key)
    return Item(key, item.value, item.version, item.expires_at_ms)


def _one_partition(mutations: Sequence[Mutation]) -> Key:
    """The first key of an unconditional write, once every key is checked to be valid and of
    the same partition."""
    if not mutations:
        raise InvalidArgument("a write needs at least one mutation", code="empty_write")
    first = mutations[0].key
    for m in mutations:
        m.key.validate()
        if (m.key.keyspace, m.key.partition) != (first.keyspace, first.partition):
            raise InvalidArgument(
                "apply() takes the mutations of one partition", code="cross_partition"
            )
    return first


def _item(key: Key, item: pb.Item) -> Item | None:
    """A read's answer for ``key`` (the one asked for: not rebuilt from the reply)."""
    return Item(key, item.value, item.version, item.expires_at_ms) if item.found else None


def _outcome_error(outcome: pb.WriteResult | pb.GetResult | None) -> MinithreadsError:
    """A BatchWrite or BatchGet part's error (None: the call itself failed, its outcome unknown)."""
    if outcome is None:
        return Unavailable("the batch call failed")
    error = outcome.error
    cls = ERROR_CLASSES.get(error.kind, Internal)
    if issubclass(cls, RateLimited):
        return cls(error.message, code=error.code, retry_after_s=error.retry_after_ms / 1000)
    return cls(error.message, code=error.code)


def _unknown(error: MinithreadsError) -> Indeterminate:
    if isinstance(error, Indeterminate):
        return error
    return Indeterminate(f"outcome unknown: {error.message}")


class _Backoff:
    """Jittered exponential pauses between attempts, within a retry budget — and within the
    deadline of the request being served, if there is one: past it nobody waits for the
    answer."""

    def __init__(self, budget_s: float) -> None:
        left = deadline.remaining_s()  # the request being served has this long left
        budget_s = budget_s if left is None else min(budget_s, left)
        self._deadline = asyncio.get_running_loop().time() + budget_s
        self.delay_s = 0.02

    async def pause(self, give_up_with: MinithreadsError) -> None:
        """Wait before the next attempt, or raise ``give_up_with`` if the budget is spent."""
        if asyncio.get_running_loop().time() + self.delay_s > self._deadline:
            raise give_up_with
        await asyncio.sleep(self.delay_s * (0.5 + random.random()))
        self.delay_s = min(self.delay_s * 2, 0.5)


class _Coalescer:
    """Gathers single-key calls into one RPC per group (a replica, with the call's options).

    Sixty-four callers each doing one get become a handful of multi-key Gets: the per-RPC
    cost (the dominant one in Python gRPC) is paid once per batch, and a batch of puts is one
    log entry on the server. Only calls whose meaning does not change when grouped are
    coalesced into one request (reads, and writes without conditions); a write with conditions
    rides in the same RPC as a request of its own (:class:`_Conditional`).

    Calls made in the same event-loop turn go together. With ``max_in_flight``, a group also
    has at most that many RPCs out at once, and calls arriving meanwhile wait to go together
    when one returns (Nagle's rule). Under load that makes batches several times larger: the
    callers a reply releases spread their next keys over every primary, so without the cap
    each primary got a BatchWrite of a few puts per reply from any of them. An RPC out for
    longer than ``stall_ms`` stops counting against the cap, so one slow batch (a read
    waiting for a lease or a replica to catch up) does not hold up its group behind it.
    """

    def __init__(
        self,
        send: Callable[[Any, list[Any]], Awaitable[list[Any]]],
        max_in_flight: int = 0,
        stall_ms: int = 100,
    ) -> None:
        self._send = send
        self._max_in_flight = max_in_flight  # per group; 0: no limit
        self._stall_s = stall_ms / 1000
        self._groups: dict[Any, list[tuple[Any, asyncio.Future[Any]]]] = {}
        self._in_flight: dict[Any, int] = defaultdict(int)
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, group: Any, payload: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._groups.setdefault(group, []).append((payload, future))
        self._schedule()
        return future

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        groups, self._groups = self._groups, {}
        for group, calls in groups.items():
            if self._max_in_flight and self._in_flight[group] >= self._max_in_flight:
                self._groups[group] = calls  # they go when one of the group's RPCs returns
                continue
            for start in range(0, len(calls), MAX_BATCH):
                self._in_flight[group] += 1
                task = asyncio.create_task(self._run(group, calls[start : start + MAX_BATCH]))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run(self, group: Any, calls: list[tuple[Any, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        slot = _Slot(self, group)
        stalled = loop.call_later(self._stall_s, slot.release) if self._max_in_flight else None
        try:
            results = await self._send(group, [payload for payload, _ in calls])
        except BaseException as err:  # every caller of the batch gets the batch's failure
            for _, future in calls:
                if not future.done():
                    future.set_exception(err)
            if not isinstance(err, Exception):
                raise
            return
        finally:
            if stalled is not None:
                stalled.cancel()
            # Scheduled after the callers answered here are woken (in the loop's queue), so the
            # next calls they make join the group's next RPC: flushed ahead of them, each
            # BatchWrite carried only what queued during the last one, and their next writes
            # waited a whole round trip for the one after.
            loop.call_soon(slot.release)
        for (_, future), result in zip(calls, results, strict=True):
            if future.done():
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)


class _Slot:
    """One RPC's place in its group's count, given back once: when it returns or stalls."""

    __slots__ = ("_batcher", "_group", "_held")

    def __init__(self, batcher: _Coalescer, group: Any) -> None:
        self._batcher, self._group, self._held = batcher, group, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._batcher._in_flight[self._group] -= 1
            self._batcher._schedule()


class KVClient:
    """``async with KVClient(manager_addr) as kv: await kv.put(Key(...), b"v")``."""

    def __init__(
        self,
        manager_addr: str,
        *,
        timeout_ms: int = 5_000,
        retry_budget_ms: int = 10_000,
        write_batches_in_flight: int = 1,
        read_batches_in_flight: int = 1,
    ) -> None:
        """``write_batches_in_flight``: per primary, how many BatchWrites may be out at once
        before further unconditional writes wait to share the next (0: no limit). Every
        BatchWrite costs the primary a gRPC call, a transaction and an Append per follower
        whatever its size, so fewer, larger ones win while the box is busy: with 64 callers,
        one at a time made ~14 puts per BatchWrite and ~1.25x the puts per second of two
        (medians of 3 alternating runs, after replication left gRPC), two ~1.6x no limit.
        ``read_batches_in_flight``: the same for BatchGets, per replica and consistency; with
        64 callers one at a time did ~1.7x the strong gets per second of no limit at half
        the p99 (the client's and the replicas' CPU per get both halved)."""
        self._manager_addr = manager_addr
        self._timeout_s = timeout_ms / 1000
        self._budget_s = retry_budget_ms / 1000
        self._table = pb.RoutingTable()
        self._quota_keyspaces: frozenset[str] = frozenset()
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._stubs: dict[str, kv_pb2_grpc.KVAsyncStub] = {}
        self._manager: grpc.aio.Channel | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self.session = Session()
        self.writes = WriteSession()
        self._reads = _Coalescer(self._send_reads, max_in_flight=read_batches_in_flight)
        self._writes = _Coalescer(self._send_writes, max_in_flight=write_batches_in_flight)
        self.holds = Holds(time.monotonic)
        self._commit_ewma_s = 0.0
        self._commit_at = 0.0  # monotonic time of the last answered BatchWrite

    def recent_commit_latency_s(self) -> float:
        """How long BatchWrites have taken lately (a moving average), 0 once none has been
        answered for two seconds: for overload control, which must not act on stale news."""
        if time.monotonic() - self._commit_at > 2.0:
            return 0.0
        return self._commit_ewma_s

    def commit_pressure(self, target_ms: float) -> Callable[[], float]:
        """The recent commit latency as a ratio to ``target_ms``, for a service's overload
        control to watch (past 1: the KV is saturated, yield what can wait)."""
        return lambda: self.recent_commit_latency_s() * 1000 / target_ms

    def _observe_commit(self, took_s: float) -> None:
        self._commit_ewma_s = 0.8 * self._commit_ewma_s + 0.2 * took_s
        self._commit_at = time.monotonic()

    async def __aenter__(self) -> KVClient:
        self._manager = grpc.aio.insecure_channel(self._manager_addr, options=RECONNECT_OPTIONS)
        try:
            await self.refresh()
        except Unavailable as err:
            # Start anyway: a service whose KV is not up yet should come up and answer
            # "unavailable" (and recover by itself), not crash-loop.
            log.warning("KV routing table not available yet", extra={"reason": err.message})
        return self

    async def __aexit__(self, *exc: object) -> None:
        for chan in self._channels.values():
            await chan.close()
        if self._manager is not None:
            await self._manager.close()

    def _call_timeout_s(self) -> float | None:
        """Our timeout, cut to what the inbound request being served has left (deadline
        propagation, without the cost of a client interceptor on this hot path)."""
        return deadline.effective_timeout_s(self._timeout_s)

    # ---------------------------------------------------------------- routing

    async def refresh(self) -> None:
        """Fetch the routing table (coalescing concurrent refreshes into one call)."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self._fetch_table())
        await asyncio.shield(self._refreshing)

    async def _fetch_table(self) -> None:
        assert self._manager is not None, "use KVClient as an async context manager"
        stub = kv_pb2_grpc.ShardManagerStub(self._manager)
        try:
            self._table = await stub.GetRoutingTable(
                pb.RoutingRequest(), timeout=self._call_timeout_s()
            )
        except grpc.aio.AioRpcError as err:
            raise Unavailable(f"shard manager unreachable: {err.code().name}") from None
        self._quota_keyspaces = frozenset(self._table.quota_keyspaces)

    def _apart(self, keyspace: str, quota_keyspaces: frozenset[str] | None = None) -> str:
        """What keeps a keyspace's keys in requests of their own: its name if it has a quota
        (one over its quota is refused alone), else nothing (they share, as fewer entries).
        A call that groups and later finds its parts again passes the set it grouped by: a
        refresh in between may change it."""
        quotas = self._quota_keyspaces if quota_keyspaces is None else quota_keyspaces
        return keyspace if keyspace in quotas else ""

    async def _learn_quota(self, keyspaces: Iterable[str]) -> None:
        """A refusal over a quota the table did not list: the table is older than the quota."""
        if not set(keyspaces) <= self._quota_keyspaces:
            await self._try_refresh()

    def shard_of(self, key: Key) -> int:
        return self._table.microshard_to_shard[self.microshard_of(key)]

    def microshard_of(self, key: Key) -> int:
        if not self._table.microshards:
            raise Unavailable("no routing table yet")
        return microshard(key.keyspace, key.partition, self._table.microshards)

    async def _ensure_table(self) -> None:
        if not self._table.microshards:
            await self.refresh()

    async def _routed(self, key: Key, replica_of: Callable[[int], str]) -> tuple[int, str]:
        """The key's shard and the address to send to, waiting out a moment without a primary
        (a failover or a rebalance in progress) within the retry budget."""
        backoff: _Backoff | None = None  # made on the first miss only: this is the hot path
        while True:
            try:
                await self._ensure_table()
                shard = self.shard_of(key)
                return shard, self._addr(replica_of(shard), shard)
            except Unavailable as err:  # no primary now, or the manager did not answer
                error = err
            backoff = backoff or _Backoff(self._budget_s)
            await backoff.pause(_given_up(error))
            await self._try_refresh()

    async def _try_refresh(self) -> None:
        with contextlib.suppress(Unavailable):
            await self.refresh()

    def _info(self, shard: int) -> pb.ShardInfo:
        return self._table.shards[shard]

    def _stub(self, replica: str, shard: int) -> kv_pb2_grpc.KVAsyncStub:
        return self._stub_at(self._addr(replica, shard))

    def _addr(self, replica: str, shard: int) -> str:
        addr = self._info(shard).addrs.get(replica)
        if not addr:
            raise NotPrimary(f"shard {shard} has no primary now")
        return addr

    def _stub_at(self, addr: str) -> kv_pb2_grpc.KVAsyncStub:
        if addr not in self._stubs:
            self._channels[addr] = untraced_channel(addr)  # spans of our own: outbound()
            self._stubs[addr] = kv_pb2_grpc.KVStub(self._channels[addr])
        return self._stubs[addr]

    def _route(self, shard: int) -> pb.Route:
        return pb.Route(shard=shard, epoch=self._info(shard).epoch)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        """Run ``attempt`` until it succeeds, as ``next_step`` says, within the retry budget."""
        backoff = _Backoff(self._budget_s)
        while True:
            try:
                return await attempt()
            except grpc.aio.AioRpcError as err:
                error: MinithreadsError = error_from_rpc(err)
            except MinithreadsError as err:
                error = err
            step = next_step(error, idempotent=idempotent)
            if step is Step.ANSWER:
                raise error
            if step is not Step.AGAIN:
                await self._try_refresh()  # the next call goes to the new primary, or shard
                # Moved: the caller routes again (_rerouting); else it may have happened.
                raise error if step is Step.ROUTE_AGAIN else _unknown(error)
            event("kv.retry", code=error.code, delay_s=backoff.delay_s)
            await backoff.pause(_given_up(error))
            await self._try_refresh()

    async def _rerouting(self, routed: Callable[[], Awaitable[T]]) -> T:
        """Run ``routed`` (which routes its keys afresh each time) again while a shard says
        a key's μshard has moved: during a move, until the routing table shows its new
        shard (its keys are refused while they are copied), within the retry budget."""
        backoff: _Backoff | None = None
        while True:
            try:
                return await routed()
            except Moved as err:
                event("kv.retry", code=err.code)
                backoff = backoff or _Backoff(self._budget_s)
                await backoff.pause(_given_up(err))

    # ---------------------------------------------------------------- reads

    async def get(self, key: Key, consistency: Consistency = Consistency.STRONG) -> Item | None:
        key.validate()
        shard, addr = await self._routed(key, lambda s: self._read_replica(s, consistency))
        result: list[Item | None] = await self._reads.submit((addr, consistency), [(shard, key)])
        return result[0]

    async def _send_reads(
        self, group: tuple[str, Consistency], calls: list[list[tuple[int, Key]]]
    ) -> list[list[Item | None] | BaseException]:
        """One BatchGet to one replica for every shard's keys of every call (a call: a get's
        key, or a multi_get's keys for this replica); a part it refuses is retried on its own
        (reads are always safe to retry)."""
        addr, consistency = group
        # A part per shard and keyspace: a keyspace over its quota is refused alone.
        by_part = _by_shard(((s, self._apart(k.keyspace)), k) for call in calls for s, k in call)
        found: dict[Key, Item | BaseException | None] = {}
        for part, refusal in self._held_parts(addr, by_part).items():
            found.update(dict.fromkeys(by_part.pop(part), refusal))
        parts = [
            (keyspace, shard, keys[start : start + MAX_BATCH])
            for (shard, keyspace), keys in by_part.items()
            for start in range(0, len(keys), MAX_BATCH)
        ]
        outcomes: list[pb.GetResult | None] = []
        try:
            if parts:
                request = pb.BatchGetRequest(
                    gets=[
                        pb.GetRequest(
                            route=self._route(shard),
                            keys=[_pb_key(k) for k in keys],
                            read=self._read_options(shard, consistency),
                        )
                        for _, shard, keys in parts
                    ],
                    held=self.holds.take(addr),
                )
                with outbound(_BATCH_GET) as metadata:
                    reply = await self._stub_at(addr).BatchGet(
                        request, timeout=self._call_timeout_s(), metadata=metadata
                    )
                outcomes = list(reply.results)
        except grpc.aio.AioRpcError:
            outcomes = [None] * len(parts)
        failed: list[list[Key]] = []
        for (keyspace, _, keys), outcome in zip(parts, outcomes, strict=True):
            if outcome is not None and outcome.HasField("ok"):
                for key, item in zip(keys, outcome.ok.items, strict=True):
                    found[key] = _item(key, item)
            elif outcome is not None and isinstance(over := _outcome_error(outcome), OverQuota):
                found.update(dict.fromkeys(keys, over))  # back-pressure: the caller's answer
                if keyspace:
                    self.holds.hold(addr, keyspace, over)
            else:
                failed.append(keys)
        if failed:  # retried on their own, all at once (reads are always safe to retry)
            for retried in await asyncio.gather(
                *(self._read_part(keys, consistency) for keys in failed)
            ):
                found.update(retried)
        out: list[list[Item | None] | BaseException] = []
        for call in calls:
            answers = [found[key] for _, key in call]
            error = next((a for a in answers if isinstance(a, BaseException)), None)
            out.append(error if error is not None else answers)  # type: ignore[arg-type]
        return out

    async def _read_part(
        self, keys: list[Key], consistency: Consistency
    ) -> dict[Key, Item | BaseException | None]:
        """One shard's part of a BatchGet that was refused or failed, on the retrying path."""
        try:
            return dict(await self._get_keys(keys, consistency))
        except MinithreadsError as err:
            if isinstance(err, RateLimited):
                await self._learn_quota(k.keyspace for k in keys)
            return dict.fromkeys(keys, err)

    async def multi_get(
        self, keys: Iterable[Key], consistency: Consistency = Consistency.STRONG
    ) -> dict[Key, Item | None]:
        """One BatchGet per replica (the batcher groups the keys), in parallel."""
        unique = list(dict.fromkeys(keys))
        for key in unique:
            key.validate()
        routes = await self._routes(unique, lambda s: self._read_replica(s, consistency))
        if routes is None:  # a shard without a primary just now: each key waits on its own
            found = await asyncio.gather(*(self.get(key, consistency) for key in unique))
            return dict(zip(unique, found, strict=True))
        by_addr: dict[str, list[tuple[int, Key]]] = defaultdict(list)
        for key, (shard, addr) in zip(unique, routes, strict=True):
            by_addr[addr].append((shard, key))
        parts = await asyncio.gather(
            *(self._reads.submit((addr, consistency), call) for addr, call in by_addr.items())
        )
        return {
            key: item
            for call, part in zip(by_addr.values(), parts, strict=True)
            for (_, key), item in zip(call, part, strict=True)
        }

    async def _routes(
        self, keys: Sequence[Key], replica_of: Callable[[int], str]
    ) -> list[tuple[int, str]] | None:
        """Each key's shard and address, all at once; None if any shard cannot be served now
        (the callers then take the per-key path, which waits for a primary)."""
        await self._ensure_table()
        addrs: dict[int, str] = {}
        routes = []
        try:
            for key in keys:
                shard = self.shard_of(key)
                addr = addrs.get(shard)
                if addr is None:
                    addr = addrs[shard] = self._addr(replica_of(shard), shard)
                routes.append((shard, addr))
        except Unavailable:  # no primary now (NotPrimary), or no routing table
            return None
        return routes

    async def _get_keys(
        self, keys: Sequence[Key], consistency: Consistency
    ) -> dict[Key, Item | None]:
        """Read ``keys`` with retries, a Get per shard they route to."""

        async def routed() -> dict[Key, Item | None]:
            await self._ensure_table()
            by_shard = _by_shard((self.shard_of(key), key) for key in keys)
            parts = await asyncio.gather(
                *(self._get_shard(shard, part, consistency) for shard, part in by_shard.items())
            )
            return {key: item for part in parts for key, item in part.items()}

        return await self._rerouting(routed)

    async def _get_shard(
        self, shard: int, keys: Sequence[Key], consistency: Consistency
    ) -> dict[Key, Item | None]:
        out: dict[Key, Item | None] = {}
        for start in range(0, len(keys), MAX_BATCH):
            chunk = keys[start : start + MAX_BATCH]

            async def attempt(chunk: Sequence[Key] = chunk) -> pb.GetResponse:
                request = pb.GetRequest(
                    route=self._route(shard),
                    keys=[_pb_key(k) for k in chunk],
                    read=self._read_options(shard, consistency),
                )
                with outbound(_GET) as metadata:
                    return await self._read_stub(shard, consistency).Get(
                        request, timeout=self._call_timeout_s(), metadata=metadata
                    )

            reply = await self._retrying(attempt, idempotent=True)
            for key, item in zip(chunk, reply.items, strict=True):
                out[key] = _from_pb(item)
        return out

    def _read_options(self, shard: int, consistency: Consistency) -> pb.ReadOptions:
        if consistency == Consistency.RYW and shard not in self.session.tokens:
            consistency = Consistency.STALE  # nothing of ours to see there: bounded staleness
        read = pb.ReadOptions(consistency=int(consistency))  # type: ignore[arg-type]
        if consistency == Consistency.STRONG:
            return read
        if consistency == Consistency.RYW:
            read.min_version.CopyFrom(self.session.tokens[shard])
        floor = self._info(shard).min_read_seq  # μshards moved in: not from before they came
        if floor > read.min_version.seq:
            read.min_version.shard, read.min_version.seq = shard, floor
        return read

    def _read_stub(self, shard: int, consistency: Consistency) -> kv_pb2_grpc.KVAsyncStub:
        return self._stub(self._read_replica(shard, consistency), shard)

    def _read_replica(self, shard: int, consistency: Consistency) -> str:
        info = self._info(shard)
        if consistency == Consistency.STRONG or not info.replicas:
            return info.primary
        # Any replica may serve; one that cannot refuses and the retry lands elsewhere.
        return random.choice(list(info.replicas))

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
        """One page of a partition's keys with ``prefix``; the cursor resumes after it."""

        async def routed() -> pb.ScanResponse:
            await self._ensure_table()
            shard = self.shard_of(Key(keyspace, partition, prefix))

            async def attempt() -> pb.ScanResponse:
                request = pb.ScanRequest(
                    route=self._route(shard),
                    keyspace=keyspace,
                    partition=partition,
                    prefix=prefix,
                    cursor=cursor,
                    limit=limit,
                    reverse=reverse,
                    read=self._read_options(shard, consistency),
                )
                with outbound(_SCAN) as metadata:
                    return await self._read_stub(shard, consistency).Scan(
                        request, timeout=self._call_timeout_s(), metadata=metadata
                    )

            return await self._retrying(attempt, idempotent=True)

        reply = await self._rerouting(routed)
        items = [item for item in map(_from_pb, reply.items) if item is not None]
        return items, reply.next_cursor

    async def shards(self) -> list[int]:
        """The shards of the routing table."""
        await self._ensure_table()
        return list(range(len(self._table.shards)))

    async def outbox_page(
        self, shard: int, *, cursor: str = "", limit: int = 200
    ) -> tuple[list[Key], str]:
        """One page of ``shard``'s outbox index: the keys of the job rows it holds (see
        ``OUTBOX_KEY_PREFIX``); the cursor resumes after it."""

        async def attempt() -> pb.ScanResponse:
            await self._ensure_table()
            request = pb.ScanRequest(
                route=self._route(shard), outbox=True, cursor=cursor, limit=limit
            )
            return await self._stub(self._info(shard).primary, shard).Scan(
                request, timeout=self._call_timeout_s()
            )

        reply = await self._retrying(attempt, idempotent=True)
        keys = [Key(i.key.keyspace, i.key.partition, i.key.key) for i in reply.items]
        return keys, reply.next_cursor

    async def scan_pages(
        self, keyspace: str, partition: bytes, prefix: bytes = b"", *, page_size: int = 1000
    ) -> AsyncIterator[list[Item]]:
        """Every key of a partition with ``prefix``, a page at a time (strong reads)."""
        cursor = ""
        while True:
            items, cursor = await self.scan(
                keyspace, partition, prefix, cursor=cursor, limit=page_size
            )
            yield items
            if not cursor:
                return

    # ---------------------------------------------------------------- writes

    async def write(
        self,
        mutations: Sequence[Mutation],
        checks: Sequence[Check] = (),
        durability: Durability = Durability.QUORUM,
    ) -> pb.WriteResponse:
        """Apply ``mutations`` atomically if every check holds — within ONE shard (an OCC
        transaction when the checks carry versions read earlier). Concurrent writes bound for
        the same primary share one BatchWrite, each still a write of its own."""
        if not mutations:
            raise InvalidArgument("a write needs at least one mutation", code="empty_write")
        keys = [m.key for m in mutations] + [c.key for c in checks]
        for key in keys:
            key.validate()
        call = (tuple(mutations), tuple(checks))

        async def routed() -> pb.WriteResponse:
            await self._ensure_table()
            shards = {self.shard_of(k) for k in keys}
            if len(shards) != 1:
                raise InvalidArgument(
                    "a write (or transaction) must stay within one shard; use multi_put for many",
                    code="cross_shard",
                )
            shard, addr = await self._routed(keys[0], lambda s: self._info(s).primary)
            result: pb.WriteResponse = await self._writes.submit(
                (addr, durability), _Conditional(shard, *call)
            )
            return result

        return await self._rerouting(routed)

    async def _one(self, mutation: Mutation, durability: Durability) -> pb.Item:
        """A single unconditional mutation, batched with concurrent ones bound for the same
        primary (one BatchWrite carrying a write per shard)."""
        return (await self.apply([mutation], durability))[0]

    async def apply(
        self, mutations: Sequence[Mutation], durability: Durability = Durability.QUORUM
    ) -> list[pb.Item]:
        """Unconditional mutations of ONE partition, applied together (one log entry) and
        merged with concurrent unconditional writes bound for the same shard: cheaper than
        :meth:`write`, for changes that need no check (a row and the count beside it).
        Returns each mutation's result."""
        first = _one_partition(mutations)
        shard, addr = await self._routed(first, lambda s: self._info(s).primary)
        keyspace = self._apart(first.keyspace)
        if keyspace and (refusal := self.holds.check(addr, keyspace, len(mutations))):
            raise refusal  # held here, before any batching: a refusal costs its caller little
        # Awaited directly, not through apply_many's gather: a gather of one future woke each
        # caller a loop turn later, which cost a fifth of the puts' throughput.
        parts = await self._writes.submit(
            (addr, durability), _Unconditional(((shard, tuple(mutations)),))
        )
        part: list[pb.Item] | BaseException = parts[0]
        if isinstance(part, BaseException):
            raise part
        return part

    @overload
    async def apply_many(
        self,
        groups: Sequence[Sequence[Mutation]],
        durability: Durability = ...,
        *,
        return_exceptions: Literal[False] = ...,
    ) -> list[list[pb.Item]]: ...

    @overload
    async def apply_many(
        self,
        groups: Sequence[Sequence[Mutation]],
        durability: Durability = ...,
        *,
        return_exceptions: Literal[True],
    ) -> list[list[pb.Item] | MinithreadsError]: ...

    async def apply_many(
        self,
        groups: Sequence[Sequence[Mutation]],
        durability: Durability = Durability.QUORUM,
        *,
        return_exceptions: bool = False,
    ) -> list[list[pb.Item]] | list[list[pb.Item] | MinithreadsError]:
        """:meth:`apply` for many partitions at once (a fan-out's inbox rows): one BatchWrite
        per primary; each group atomic on its own, and the call fails if any group does —
        or, with ``return_exceptions``, answers each group with its results or its error
        (a bulk writer over its quota learns which of its groups were refused)."""
        firsts = [_one_partition(mutations) for mutations in groups]
        routes = await self._routes(firsts, lambda s: self._info(s).primary)
        if routes is None:  # a shard without a primary just now: each group waits on its own
            routes = [await self._routed(key, lambda s: self._info(s).primary) for key in firsts]
        by_addr: dict[str, list[tuple[int, tuple[Mutation, ...]]]] = defaultdict(list)
        for mutations, (shard, addr) in zip(groups, routes, strict=True):
            by_addr[addr].append((shard, tuple(mutations)))
        answers = await asyncio.gather(
            *(
                self._writes.submit((addr, durability), _Unconditional(tuple(parts)))
                for addr, parts in by_addr.items()
            )
        )
        per_addr = {addr: iter(parts) for addr, parts in zip(by_addr, answers, strict=True)}
        out: list[list[pb.Item] | MinithreadsError] = []
        for _, addr in routes:  # the groups' answers, in their order
            part = next(per_addr[addr])
            if isinstance(part, MinithreadsError) and return_exceptions:
                out.append(part)
            elif isinstance(part, BaseException):
                raise part
            else:
                out.append(part)
        return out

    async def _send_writes(
        self, group: tuple[str, Durability], calls: list[_Unconditional | _Conditional]
    ) -> list[list[list[pb.Item] | BaseException] | pb.WriteResponse | BaseException]:
        """One BatchWrite to one primary: every unconditional call's mutations as a write per
        shard and keyspace (each part answered with its own mutations' results, or its part's
        failure: a keyspace over its quota is refused alone), each conditional write as a
        write of its own."""
        addr, durability = group
        quotas = self._quota_keyspaces  # (as it is now: a refresh while we wait may change it)
        conditional = [c for c in calls if isinstance(c, _Conditional)]
        by_shard: dict[tuple[int, str], list[Mutation]] = defaultdict(list)
        for call in calls:
            if isinstance(call, _Unconditional):
                for shard, mutations in call.parts:
                    by_shard[shard, self._apart(mutations[0].key.keyspace, quotas)].extend(
                        mutations
                    )
        held = self._held_parts(addr, by_shard)
        shards = [part for part in by_shard if part not in held]
        refused = [self._held_call(addr, c) for c in conditional]  # (equal calls: by place)
        conditional = [c for c, refusal in zip(conditional, refused, strict=True) if not refusal]
        writes = [
            pb.WriteRequest(
                route=self._route(shard),
                mutations=[_pb_mutation(m) for m in by_shard[shard, keyspace]],
                durability=int(durability),  # type: ignore[arg-type]
            )
            for shard, keyspace in shards
        ] + [
            pb.WriteRequest(
                route=self._route(c.shard),
                mutations=[_pb_mutation(m) for m in c.mutations],
                conditions=[_pb_condition(k) for k in c.checks],
                durability=int(durability),  # type: ignore[arg-type]
            )
            for c in conditional
        ]
        for write in writes:
            self.writes.tag(write)
        outcomes: list[pb.WriteResult | None] = []
        started = time.monotonic()
        try:
            if writes:
                request = pb.BatchWriteRequest(writes=writes, held=self.holds.take(addr))
                with outbound(_BATCH_WRITE) as metadata:
                    reply = await self._stub_at(addr).BatchWrite(
                        request, timeout=self._call_timeout_s(), metadata=metadata
                    )
                outcomes = list(reply.results)
                self._observe_commit(time.monotonic() - started)
        except grpc.aio.AioRpcError:
            outcomes = [None] * len(writes)  # unknown outcome for every part
        # Parts that must be retried are retried together: a failover touches many shards.
        settled = await asyncio.gather(
            *(
                self._settle(part[0], by_shard[part], write, outcome, durability)
                for part, write, outcome in zip(
                    shards, writes[: len(shards)], outcomes[: len(shards)], strict=True
                )
            ),
            *(
                self._settle_conditional(c, write, outcome, durability)
                for c, write, outcome in zip(
                    conditional, writes[len(shards) :], outcomes[len(shards) :], strict=True
                )
            ),
        )
        results = dict(zip(shards, settled[: len(shards)], strict=True))
        for (_, keyspace), answer in results.items():
            if keyspace:  # a keyspace with a quota, apart
                self.holds.hold(addr, keyspace, answer)
        for call, answer in zip(conditional, settled[len(shards) :], strict=True):
            if len(limited := {m.key.keyspace for m in call.mutations} & quotas) == 1:
                self.holds.hold(addr, next(iter(limited)), answer)
        results.update(held)
        sent = iter(settled[len(shards) :])
        answers = iter([refusal or next(sent) for refusal in refused])
        position: dict[tuple[int, str], int] = defaultdict(int)
        out: list[list[list[pb.Item] | BaseException] | pb.WriteResponse | BaseException] = []
        for call in calls:
            if isinstance(call, _Conditional):
                out.append(next(answers))  # type: ignore[arg-type]
                continue
            parts: list[list[pb.Item] | BaseException] = []
            for shard, mutations in call.parts:
                key = (shard, self._apart(mutations[0].key.keyspace, quotas))
                part = results[key]
                assert not isinstance(part, pb.WriteResponse)
                if isinstance(part, BaseException):
                    parts.append(part)
                    continue
                mine = list(part[position[key] : position[key] + len(mutations)])
                position[key] += len(mutations)
                failed = next((r for r in mine if isinstance(r, BaseException)), None)
                parts.append(failed if failed is not None else mine)  # type: ignore[arg-type]
            out.append(parts)
        return out

    def _held_parts(
        self, addr: str, parts: Mapping[tuple[int, str], Sized]
    ) -> dict[tuple[int, str], OverQuota]:
        """The parts of a batch to ``addr`` answered here, unsent: those of a keyspace the
        replica refused over its quota until a time not yet come (see holds.py)."""
        held = {}
        for part, keys in parts.items():
            if part[1] and (refusal := self.holds.check(addr, part[1], len(keys))):
                held[part] = refusal
        return held

    def _held_call(self, addr: str, call: _Conditional) -> OverQuota | None:
        """A conditional write answered here, unsent, as :meth:`_held_parts`."""
        for keyspace in {m.key.keyspace for m in call.mutations} & self._quota_keyspaces:
            if refusal := self.holds.check(addr, keyspace, len(call.mutations)):
                return refusal
        return None

    async def _settle_conditional(
        self,
        call: _Conditional,
        write: pb.WriteRequest,
        outcome: pb.WriteResult | None,
        durability: Durability,
    ) -> pb.WriteResponse | BaseException:
        """A conditional write's part of a BatchWrite: its answer, or — refused — the write
        again on its own, or — outcome unknown — its repeat (see Repeats)."""
        if outcome is not None and outcome.HasField("ok"):
            self.session.observe(outcome.ok.version)
            return outcome.ok
        error = _outcome_error(outcome)
        step = next_step(error, idempotent=bool(write.session))
        if step is Step.ANSWER:
            return error
        if step is Step.UNKNOWN:
            await self._try_refresh()  # the next call goes to the new primary
            return _unknown(error)
        try:
            if not isinstance(error, Refused):
                return await self._repeat(call.shard, write)  # Moved: write() routes again
            return await self._write_at(call.shard, call.mutations, durability, call.checks)
        except MinithreadsError as err:
            return err

    async def _settle(
        self,
        shard: int,
        mutations: list[Mutation],
        write: pb.WriteRequest,
        outcome: pb.WriteResult | None,
        durability: Durability,
    ) -> Sequence[pb.Item | BaseException] | BaseException:
        """One shard's part of a BatchWrite: its results, or a retry where that is safe — a
        refused part written again, an unknown outcome repeated (see Repeats)."""
        if outcome is not None and outcome.HasField("ok"):
            self.session.observe(outcome.ok.version)
            return list(outcome.ok.results)
        error = _outcome_error(outcome)
        step = next_step(error, idempotent=bool(write.session))
        if step is Step.ANSWER:
            if isinstance(error, RateLimited):
                await self._learn_quota(m.key.keyspace for m in mutations)
            return error
        if step is Step.UNKNOWN:  # it may have happened, and cannot be repeated
            await self._try_refresh()  # the next call goes to the new primary
            return _unknown(error)
        if not isinstance(error, Refused):
            try:
                return list((await self._repeat(shard, write)).results)
            except Moved:
                pass  # the first attempt never took effect: write it apart, routed afresh
            except MinithreadsError as err:
                return err
        return await self._write_apart(mutations, durability, _Backoff(self._budget_s))

    async def _repeat(self, shard: int, write: pb.WriteRequest) -> pb.WriteResponse:
        """``write`` (of a session), whose outcome is unknown, sent again as it was to
        ``shard``'s primary of now until it has an outcome: the primary answers with the first
        one if the first attempt took effect. Raises ``Moved`` if its μshard left the shard
        and the write had not taken effect there."""
        self.writes.repeated += 1
        event("kv.repeat", session_seq=write.session_seq)
        await self._try_refresh()
        return await self._until_outcome(shard, write, unknown=True)

    async def _write_apart(
        self, mutations: list[Mutation], durability: Durability, backoff: _Backoff
    ) -> list[pb.Item | BaseException]:
        """Coalesced unconditional mutations that were refused, written again: a write per
        shard they route to now, each settled on its own (one part failing does not fail the
        others' callers). A part refused because a μshard moved is split again on a fresh
        routing table: the mutations of one shard's part may no longer share a shard."""
        await self._ensure_table()
        routed = [self.shard_of(m.key) for m in mutations]
        results: list[pb.Item | BaseException] = [
            Internal("unsettled", code="internal") for _ in mutations
        ]

        async def part(shard: int, indexes: list[int]) -> None:
            ours = [mutations[i] for i in indexes]
            settled: Sequence[pb.Item | BaseException]
            try:
                settled = list((await self._write_at(shard, ours, durability)).results)
            except Moved as err:
                try:
                    await backoff.pause(_given_up(err))
                except MinithreadsError as spent:
                    settled = [spent] * len(ours)
                else:
                    settled = await self._write_apart(ours, durability, backoff)
            except MinithreadsError as err:
                settled = [err] * len(ours)
            for i, result in zip(indexes, settled, strict=True):
                results[i] = result

        by_shard = _by_shard(zip(routed, range(len(mutations)), strict=True))
        await asyncio.gather(*(part(shard, indexes) for shard, indexes in by_shard.items()))
        return results

    async def _write_at(
        self,
        shard: int,
        mutations: Sequence[Mutation],
        durability: Durability,
        checks: Sequence[Check] = (),
    ) -> pb.WriteResponse:
        """One write to ``shard``'s primary, on its own; ``Moved`` is raised (see _retrying)
        for the caller to route again."""
        request = pb.WriteRequest(
            mutations=[_pb_mutation(m) for m in mutations],
            conditions=[_pb_condition(c) for c in checks],
            durability=int(durability),  # type: ignore[arg-type]
        )
        self.writes.tag(request)
        return await self._until_outcome(shard, request, unknown=False)

    async def _until_outcome(
        self, shard: int, request: pb.WriteRequest, *, unknown: bool
    ) -> pb.WriteResponse:
        """Send ``request`` to ``shard``'s primary until it has an outcome: refusals retried,
        and — a write of a session — an unknown outcome repeated under the same number (see
        Repeats). What the caller gets if the budget runs out says whether any attempt may
        have taken effect (``unknown``: one before this call may have)."""

        async def attempt() -> pb.WriteResponse:
            nonlocal unknown
            request.route.CopyFrom(self._route(shard))
            stub = self._stub(self._info(shard).primary, shard)
            try:
                with outbound(_WRITE) as metadata:
                    return await stub.Write(
                        request, timeout=self._call_timeout_s(), metadata=metadata
                    )
            except grpc.aio.AioRpcError as err:
                error = error_from_rpc(err)
            if next_step(error, idempotent=False) is Step.UNKNOWN:
                unknown = True  # this attempt may have taken effect
            raise error

        try:
            reply = await self._retrying(attempt, idempotent=bool(request.session))
        except (Moved, ConditionFailed, InvalidArgument, Indeterminate):
            raise  # an answer (a repeat's is the first attempt's too), or unknown already
        except MinithreadsError as err:
            if unknown:
                raise _unknown(err) from None
            raise
        self.session.observe(reply.version)
        return reply

    async def put(
        self, key: Key, value: bytes, *, ttl_ms: int = 0, durability: Durability = Durability.QUORUM
    ) -> int:
        """Store ``value``; returns the key's new version."""
        return (await self._one(Put(key, value, ttl_ms), durability)).version

    async def put_if_absent(self, key: Key, value: bytes) -> int:
        """Store only if the key does not exist; raises ConditionFailed otherwise."""
        reply = await self.write([Put(key, value)], [Check.absent(key)])
        return reply.results[0].version

    async def claim(
        self, key: Key, value: bytes, *, ttl_ms: int = 0, extra: Sequence[Mutation] = ()
    ) -> tuple[bool, Item]:
        """Put ``value`` (and ``extra``, same shard) only if ``key`` is absent. Returns
        (True, our item) if we won, or (False, the holder's item) if someone else holds it.

        A losing check can see a competing write that is sequenced but not yet committed, which
        a read cannot see yet: then we look again shortly, and try again if the competitor was
        never committed (its primary failed).
        """
        for attempt in range(20):
            try:
                reply = await self.write([Put(key, value, ttl_ms), *extra], [Check.absent(key)])
            except ConditionFailed:
                held = await self.get(key)
                if held is not None:
                    return False, held
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            return True, Item(key, value, reply.results[0].version)
        raise Unavailable(f"{key} is contended; try again", code="contended")

    async def delete(self, key: Key) -> None:
        await self._one(Delete(key), Durability.QUORUM)

    async def increment(self, key: Key, delta: int = 1) -> int:
        return int((await self._one(Increment(key, delta), Durability.QUORUM)).value)

    async def multi_put(self, items: Iterable[tuple[Key, bytes]]) -> None:
        """Many puts: one BatchWrite per primary (the batcher groups them); each shard's part of
        a batch is atomic, and the call fails if any part does."""
        await self.apply_many([[Put(key, value)] for key, value in items])
