"""The replica: sequencing and group commit as primary, log shipping as follower.

Write path (primary): validate, check conditions against committed data overlaid with the
writes already sequenced, assign the next seq, log the *effects* (an increment is logged as its
result), then wait. A round — one per tick of the flusher — makes every new entry durable
locally (one transaction) and sends an Append (one message for all shards, on a long-lived
stream) to each follower that has none outstanding; the round ends with its transaction and
does not wait for the answers, so a follower's round trip overlaps the next rounds, and what is
sequenced meanwhile goes in its next Append. An entry commits when a majority holds it and an
entry of the current epoch is at or past it (Raft's rule, so an old epoch's tail is never
committed by counting); then it is applied to the in-memory data and its writers are answered.

Leases: a follower that acknowledged a primary promises not to help another primary for
``lease`` seconds; a primary serves strong reads while a majority acknowledged it within the
lease (counted from when it *sent* the round), so two primaries never both serve strong reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import grpc
from mt_core.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from mt_core.rpc.client import untraced_channel
from mt_kv_client.routing import MAX_BATCH, Key, validate_value
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import suppress_instrumentation
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind
from prometheus_client import Gauge, Histogram

from mt_kv.data import Entry, KeyT, key_of
from mt_kv.replica.shard import Role, Shard, Waiter
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Batch, ItemRow, LogRow, ShardMeta, Store

log = logging.getLogger(__name__)

S = pb.ShardAppendResult
LEASE_SAFETY = 0.9  # serve strong reads for at most 90% of the lease: clock-rate slack
SNAPSHOT_CHUNK = 1_000


TRACER = trace.get_tracer("mt_kv.replica")


@contextlib.contextmanager
def _within(
    traced: list[SpanContext], name: str, kind: SpanKind = SpanKind.INTERNAL, **attrs: Any
) -> Iterator[None]:
    """A span for background work (a persist, a replication round) in the trace of the first
    traced write it carries, linked to the others; without any, no spans at all (not even the
    SQL instrumentation's), or every idle round would start a trace of its own."""
    if not traced:
        with suppress_instrumentation():
            yield
        return
    parent = trace.set_span_in_context(NonRecordingSpan(traced[0]))
    links = [Link(c) for c in traced[1:33]]
    with TRACER.start_as_current_span(name, parent, kind, links=links) as span:
        span.set_attributes({f"mt.{k}": v for k, v in attrs.items()})
        span.set_attribute("mt.traced_writes", len(traced))
        yield


def _entries(request: pb.AppendRequest, shard_id: int) -> list[pb.LogEntry]:
    return [e for sa in request.shards if sa.shard == shard_id for e in sa.entries]


COMMIT_SECONDS = Histogram(
    "kv_commit_seconds",
    "From sequencing a write to its commit (majority durable), by shard (primary side)",
    ["shard"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
REPLICATION_LAG = Gauge(
    "kv_replication_lag_entries",
    "Log entries a follower has not yet acknowledged as durable, by shard and follower",
    ["shard", "follower"],
)


def now_ms() -> int:
    return int(time.time() * 1000)


def _item(key: KeyT, entry: Entry | None, version: int = 0) -> pb.Item:
    k = pb.Key(keyspace=key[0], partition=key[1], key=key[2])
    if entry is None:
        return pb.Item(key=k, found=False, version=version)
    return pb.Item(
        key=k,
        found=True,
        value=entry.value,
        version=entry.version,
        expires_at_ms=entry.expires_at_ms,
    )


class Replica:
    def __init__(self, settings: ReplicaSettings, store: Store) -> None:
        self.settings = settings
        self.id = settings.replica_id
        self.store = store
        self.shards: dict[int, Shard] = {}
        self.addrs: dict[str, str] = {}
        self.lease_s = 1.0
        self._kick = asyncio.Event()
        self._answered: asyncio.Event = asyncio.Event()  # replaced after each Append answer
        self._dirty_items: list[ItemRow] = []
        self._dirty_metas: dict[int, ShardMeta] = {}
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[str] = set()  # followers with an Append outstanding
        self._sends: set[asyncio.Task[None]] = set()  # those Appends
        self._streams: dict[str, Any] = {}  # follower -> its AppendStream call
        self._keyspaces = settings.keyspaces()
        self._peer_overrides = settings.peer_overrides()

    # ------------------------------------------------------------------ lifetime

    async def load(self) -> None:
        loaded = await self.store.load()
        for meta in loaded.metas.values():
            shard = self.shard(meta.shard)
            shard.epoch, shard.primary = meta.epoch, meta.primary
            shard.applied_seq, shard.applied_epoch = meta.applied_seq, meta.applied_epoch
            shard.reset(meta.applied_seq, meta.applied_epoch)
            shard.commit_seq = meta.applied_seq
        by_shard: dict[int, list[tuple[KeyT, Entry]]] = {}
        for row in loaded.items:
            assert row.value is not None
            by_shard.setdefault(row.shard, []).append(
                (
                    (row.keyspace, row.partition, row.key),
                    Entry(row.value, row.version, row.expires_at_ms),
                )
            )
        for shard_id, entries in by_shard.items():
            self.shard(shard_id).data.replace(entries)
        for entry in loaded.log:
            shard = self.shard(entry.shard)
            if not shard.tail and entry.seq <= shard.applied_seq:
                shard.tail_start, shard.base_epoch = entry.seq, None  # older epochs unknown
            if entry.seq == shard.last_seq + 1:
                shard.tail.append(
                    pb.LogEntry(seq=entry.seq, epoch=entry.epoch, payload=entry.payload)
                )
        for shard in self.shards.values():
            shard.local_durable_seq = shard.last_seq
        log.info(
            "replica loaded",
            extra={"shards": len(self.shards), "items": len(loaded.items), "log": len(loaded.log)},
        )

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._flusher(), name="kv-flusher"))
        self._tasks.append(asyncio.create_task(self._sweeper(), name="kv-ttl-sweeper"))

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._sends]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for shard in self.shards.values():
            self._fail_waiters(shard, "replica stopping")
        for follower in list(self._streams):
            self._drop_stream(follower)
        for chan in self._channels.values():
            await chan.close()

    def shard(self, shard_id: int) -> Shard:
        if shard_id not in self.shards:
            self.shards[shard_id] = Shard(shard_id)
        return self.shards[shard_id]

    def _stub(self, replica_id: str) -> kv_pb2_grpc.ReplicationAsyncStub:
        addr = self.addrs[replica_id]
        if addr not in self._channels:
            # Our own spans cover replication (kv.replicate / kv.append, in the traces of the
            # writes carried): no tracing interceptor on this per-round stream.
            self._channels[addr] = untraced_channel(
                addr,
                options=[
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.max_send_message_length", 64 << 20),
                ],
            )
        return kv_pb2_grpc.ReplicationStub(self._channels[addr])

    def _meta(self, shard: Shard) -> None:
        self._dirty_metas[shard.id] = ShardMeta(
            shard.id, shard.epoch, shard.primary, shard.applied_seq, shard.applied_epoch
        )

    # ------------------------------------------------------------------ assignments

    def progress(self) -> list[pb.ShardProgress]:
        now = time.monotonic()
        self._export_lag()
        return [
            pb.ShardProgress(
                shard=s.id,
                epoch=s.epoch,
                applied_seq=s.applied_seq,
                last_seq=s.last_seq,
                last_epoch=s.last_epoch,
                primary=s.role is Role.PRIMARY,
                serving=(s.role is Role.PRIMARY and now >= s.serving_after)
                or (
                    s.role is Role.FOLLOWER
                    and now - s.fresh_at < self.settings.max_staleness_ms / 1000
                ),
            )
            for s in self.shards.values()
        ]

    def _export_lag(self) -> None:
        """Per shard we lead: how many entries each follower has yet to make durable."""
        for s in self.shards.values():
            if s.role is Role.PRIMARY:
                for follower in s.replicas:
                    if follower != self.id:
                        lag = s.last_seq - s.match_seq.get(follower, 0)
                        REPLICATION_LAG.labels(str(s.id), follower).set(lag)

    def assign(self, infos: Sequence[pb.ShardInfo], lease_ms: int) -> None:
        """Follow the shard manager's assignment (from a heartbeat response).

        The manager first publishes a new epoch with no primary (fencing: we then refuse the
        old primary) and, once a majority is fenced, names the most up-to-date as primary in
        that same epoch. A replica that restarts never resumes primaryship of an epoch it
        loaded from disk: the fate of its log tail is unknown, so the manager re-elects.
        """
        self.lease_s = lease_ms / 1000
        for info in infos:
            self.addrs.update(info.addrs)
            shard = self.shard(info.id)
            shard.replicas = tuple(info.replicas)
            if info.epoch < shard.epoch:
                continue
            if info.epoch > shard.epoch:
                if shard.role is Role.PRIMARY:
                    self._step_down(shard, f"epoch {info.epoch} was assigned")
                shard.epoch, shard.primary, shard.role = info.epoch, "", Role.FOLLOWER
                self._meta(shard)
            if not info.primary:
                continue
            if info.primary == self.id:
                if shard.role is not Role.PRIMARY and shard.primary == "":
                    self._promote(shard, info.epoch)
            elif shard.primary != info.primary:
                shard.primary, shard.role = info.primary, Role.FOLLOWER
                self._meta(shard)
        self.addrs.update(self._peer_overrides)  # how we reach peers, where that differs

    def _promote(self, shard: Shard, epoch: int) -> None:
        with TRACER.start_as_current_span("kv.promote") as span:  # a failover: rare, worth a trace
            span.set_attributes({"mt.shard": shard.id, "mt.epoch": epoch, "mt.replica": self.id})
            span.add_event("failover")  # this replica takes the shard over in a new epoch
            self._promote_now(shard, epoch)

    def _promote_now(self, shard: Shard, epoch: int) -> None:
        now = time.monotonic()
        shard.epoch, shard.primary, shard.role = epoch, self.id, Role.PRIMARY
        promised = (
            shard.last_ack_at + self.lease_s if shard.last_ack_primary not in ("", self.id) else 0.0
        )
        shard.serving_after = max(now, promised)
        shard.lease_until = 0.0
        followers = [r for r in shard.replicas if r != self.id]
        shard.next_seq = dict.fromkeys(followers, shard.last_seq + 1)
        shard.match_seq = dict.fromkeys(followers, 0)
        shard.acked_at = {}
        shard.commit_seq = shard.applied_seq
        shard.local_durable_seq = shard.last_seq
        shard.pending = {}
        for seq in range(shard.applied_seq + 1, shard.last_seq + 1):
            entry = shard.entry(seq)
            assert entry is not None
            self._add_pending(shard, seq, pb.LogPayload.FromString(entry.payload).effects)
        # An entry of the new epoch lets the inherited tail commit (Raft §5.4.2).
        self._sequence(shard, [])
        self._meta(shard)
        log.info("primary", extra={"shard": shard.id, "epoch": epoch, "last_seq": shard.last_seq})
        self._kick.set()

    def _step_down(self, shard: Shard, why: str) -> None:
        log.info("stepping down", extra={"shard": shard.id, "epoch": shard.epoch, "why": why})
        shard.role = Role.FOLLOWER
        shard.lease_until = 0.0
        shard.pending = {}
        shard.unpersisted = []
        self._fail_waiters(shard, why)

    def _fail_waiters(self, shard: Shard, why: str) -> None:
        while shard.waiters:
            waiter = shard.waiters.popleft()
            if not waiter.future.done():
                # Sequenced but not known to be committed: it may still commit under the next
                # primary, so the caller must treat the outcome as unknown.
                waiter.future.set_exception(
                    Unavailable(f"outcome unknown: {why}", code="indeterminate")
                )

    # ------------------------------------------------------------------ client API

    def _primary_shard(self, route: pb.Route) -> Shard:
        shard = self.shards.get(route.shard)
        if shard is None or shard.role is not Role.PRIMARY:
            raise FailedPrecondition(
                f"{self.id} is not the primary of shard {route.shard}", code="not_primary"
            )
        if route.epoch and route.epoch != shard.epoch:
            raise FailedPrecondition(
                f"shard {route.shard} is at epoch {shard.epoch}, not {route.epoch}",
                code="stale_epoch",
            )
        return shard

    async def write(self, req: pb.WriteRequest) -> pb.WriteResponse:
        response, committed = self.begin_write(req)
        if committed is not None:
            await committed
        return response

    def begin_write(
        self, req: pb.WriteRequest
    ) -> tuple[pb.WriteResponse, asyncio.Future[None] | None]:
        """Validate, check and sequence a write now; returns its response and, unless it asked
        for fast-ack, a future that resolves once it is committed (fails if its outcome became
        unknown). A batch of writes is sequenced in one go and then awaited, without a task
        per write."""
        shard = self._primary_shard(req.route)
        if not req.mutations:
            raise InvalidArgument("a write needs at least one mutation", code="empty_write")
        if len(req.mutations) + len(req.conditions) > MAX_BATCH:
            raise InvalidArgument(
                f"at most {MAX_BATCH} mutations per write", code="batch_too_large"
            )
        now = now_ms()
        for cond in req.conditions:
            self._check(shard, cond, now)
        effects = self._effects(shard, req.mutations, now)
        seq = self._sequence(shard, effects)
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(
                {
                    "mt.shard": shard.id,
                    "mt.epoch": shard.epoch,
                    "mt.seq": seq,
                    "mt.writes": len(effects),
                }
            )
        version = pb.Version(shard=shard.id, epoch=shard.epoch, seq=seq)
        response = pb.WriteResponse(version=version, results=effects)
        if req.durability == pb.FAST_ACK:
            return response, None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.waiters.append(Waiter(seq, future, time.perf_counter()))
        return response, future

    def _check(self, shard: Shard, cond: pb.Condition, now: int) -> None:
        self._validate_key(cond.key)
        current = shard.view(key_of(cond.key), now)
        held = {
            pb.Condition.ABSENT: current is None,
            pb.Condition.PRESENT: current is not None,
            pb.Condition.VERSION_EQUALS: (current.version if current else 0) == cond.version,
        }.get(cond.kind)
        if held is None:
            raise InvalidArgument("condition kind is required", code="invalid_condition")
        if not held:
            raise FailedPrecondition(
                f"condition {pb.Condition.Kind.Name(cond.kind)} failed on "
                f"{cond.key.keyspace}/{cond.key.partition!r}/{cond.key.key!r}",
                code="condition_failed",
            )

    def _validate_key(self, key: pb.Key) -> None:
        Key(key.keyspace, key.partition, key.key).validate()
        if key.keyspace not in self._keyspaces:
            raise InvalidArgument(f"unknown keyspace {key.keyspace!r}", code="unknown_keyspace")

    def _effects(self, shard: Shard, mutations: Sequence[pb.Mutation], now: int) -> list[pb.Item]:
        seq = shard.last_seq + 1
        local: dict[KeyT, Entry | None] = {}
        effects: list[pb.Item] = []
        for m in mutations:
            self._validate_key(m.key)
            key = key_of(m.key)
            op = m.WhichOneof("op")
            if op == "put":
                validate_value(m.put.value)
                expires = now + m.put.ttl_ms if m.put.ttl_ms else 0
                new: Entry | None = Entry(m.put.value, seq, expires)
            elif op == "delete":
                new = None
            elif op == "increment":
                current = local[key] if key in local else shard.view(key, now)
                try:
                    base = int(current.value) if current is not None else 0
                except ValueError:
                    raise FailedPrecondition(
                        "increment of a value that is not an integer", code="not_a_counter"
                    ) from None
                new = Entry(str(base + m.increment.delta).encode(), seq, 0)
            else:
                raise InvalidArgument(
                    "a mutation needs put, delete or increment", code="invalid_mutation"
                )
            local[key] = new
            effects.append(_item(key, new, seq))
        return effects

    def _sequence(self, shard: Shard, effects: list[pb.Item]) -> int:
        seq = shard.last_seq + 1
        entry = pb.LogEntry(
            seq=seq, epoch=shard.epoch, payload=pb.LogPayload(effects=effects).SerializeToString()
        )
        shard.append(entry)
        shard.unpersisted.append(entry)
        context = trace.get_current_span().get_span_context()
        if context.trace_flags.sampled:
            shard.traced[seq] = context
        self._add_pending(shard, seq, effects)
        self._kick.set()
        return seq

    @staticmethod
    def _add_pending(shard: Shard, seq: int, effects: Sequence[pb.Item]) -> None:
        for item in effects:
            new = Entry(item.value, item.version, item.expires_at_ms) if item.found else None
            shard.pending[key_of(item.key)] = (seq, new)

    async def _readable(self, shard_id: int, read: pb.ReadOptions, route_epoch: int) -> Shard:
        """The shard if this replica may serve ``read`` now, waiting briefly where useful."""
        shard = self.shards.get(shard_id)
        if shard is None:
            raise NotFound(f"shard {shard_id} is unknown here", code="unknown_shard")
        consistency = read.consistency or pb.STRONG
        if consistency == pb.STRONG:
            shard = self._primary_shard(pb.Route(shard=shard_id, epoch=route_epoch))
            await self._ensure_lease(shard)
            return shard
        if consistency == pb.READ_YOUR_WRITES and read.HasField("min_version"):
            token = read.min_version
            if shard.applied_seq >= token.seq:
                return shard
            if shard.role is Role.PRIMARY and token.seq <= shard.last_seq:
                await self._await_applied(shard, token.seq)
                return shard
            raise FailedPrecondition(
                f"{self.id} has applied shard {shard_id} to {shard.applied_seq}, not {token.seq}",
                code="behind",
            )
        # Bounded staleness (and RYW without a token).
        if shard.role is Role.PRIMARY:
            return shard
        bound_s = (read.max_staleness_ms or self.settings.max_staleness_ms) / 1000
        if time.monotonic() - shard.fresh_at <= bound_s:
            return shard
        raise FailedPrecondition(f"{self.id} is too stale for shard {shard_id}", code="too_stale")

    async def _await_applied(self, shard: Shard, seq: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.waiters.append(Waiter(seq, future))
        self._kick.set()
        await future

    async def _ensure_lease(self, shard: Shard) -> None:
        now = time.monotonic()
        if now < shard.serving_after:
            # A new primary honours the lease it promised the previous one.
            await asyncio.sleep(shard.serving_after - now)
        for _ in range(3):
            if shard.role is not Role.PRIMARY:
                raise FailedPrecondition(f"{self.id} lost shard {shard.id}", code="not_primary")
            if time.monotonic() < shard.lease_until:
                return
            # The lease is in doubt: a round's Appends settle it.
            self._kick.set()
            await self._next_answer()
        raise Unavailable(f"shard {shard.id} has no quorum", code="no_quorum")

    async def _next_answer(self) -> None:
        answered = self._answered
        await asyncio.wait_for(answered.wait(), self.settings.replication_timeout_ms / 1000 * 2)

    async def get(self, req: pb.GetRequest) -> pb.GetResponse:
        if len(req.keys) > MAX_BATCH:
            raise InvalidArgument(f"at most {MAX_BATCH} keys per get", code="batch_too_large")
        shard = await self._readable(req.route.shard, req.read, req.route.epoch)
        span = trace.get_current_span()
        if span.is_recording():
            level = pb.Consistency.Name(req.read.consistency or pb.STRONG)
            span.set_attributes({"mt.shard": shard.id, "mt.consistency": level})
        now = now_ms()
        items = []
        for key in req.keys:
            self._validate_key(key)
            k = key_of(key)
            items.append(_item(k, shard.data.get(k, now)))
        return pb.GetResponse(items=items, served_at=self._position(shard))

    async def scan(self, req: pb.ScanRequest) -> pb.ScanResponse:
        shard = await self._readable(req.route.shard, req.read, req.route.epoch)
        self._validate_key(pb.Key(keyspace=req.keyspace, partition=req.partition, key=req.prefix))
        limit = min(req.limit or 100, MAX_BATCH)
        try:
            after = bytes.fromhex(req.cursor) if req.cursor else None
        except ValueError:
            raise InvalidArgument("malformed scan cursor", code="invalid_cursor") from None
        found, more = shard.data.scan(
            req.keyspace, req.partition, req.prefix, after, limit, req.reverse, now_ms()
        )
        items = [_item(k, e) for k, e in found]
        cursor = found[-1][0][2].hex() if more and found else ""
        return pb.ScanResponse(items=items, next_cursor=cursor, served_at=self._position(shard))

    def _position(self, shard: Shard) -> pb.Version:
        return pb.Version(shard=shard.id, epoch=shard.epoch, seq=shard.applied_seq)

    # ------------------------------------------------------------------ group commit (primary)

    async def _flusher(self) -> None:
        interval = self.settings.round_interval_ms / 1000
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), interval)
            if self._kick.is_set() and self.settings.group_commit_delay_ms:
                # Group commit: let writes arriving right now join this round; each round
                # costs a transaction and an RPC per follower whatever its size.
                await asyncio.sleep(self.settings.group_commit_delay_ms / 1000)
            self._kick.clear()
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The store failing means we cannot promise durability: stop being anyone's
                # primary rather than acknowledge what may be lost.
                log.exception("replication round failed")
                for shard in self.shards.values():
                    if shard.role is Role.PRIMARY:
                        self._step_down(shard, "round failed")
                await asyncio.sleep(interval)

    async def _round(self) -> None:
        started = time.monotonic()
        primaries = [s for s in self.shards.values() if s.role is Role.PRIMARY]
        batch = Batch(item_writes=self._dirty_items, metas=self._dirty_metas)
        self._dirty_items, self._dirty_metas = [], {}
        persisted: dict[int, int] = {}
        traced: list[SpanContext] = []
        for shard in primaries:
            traced += [shard.traced[e.seq] for e in shard.unpersisted if e.seq in shard.traced]
            if shard.unpersisted:
                batch.log_appends += [
                    LogRow(shard.id, e.seq, e.epoch, e.payload) for e in shard.unpersisted
                ]
                persisted[shard.id] = shard.unpersisted[-1].seq
                shard.unpersisted = []
        for shard in self.shards.values():
            # Applied entries beyond the retention are dropped, in the same transaction that
            # persists their applied effects (captured above).
            floor = shard.trim(self.settings.log_retention_entries)
            if floor - shard.store_floor >= 1_000:
                batch.log_trim_upto[shard.id] = shard.store_floor = floor
        self._send_to_followers(primaries, started)
        with _within(traced, "kv.persist", entries=len(batch.log_appends)):
            await self.store.commit(batch)
        for shard_id, seq in persisted.items():
            shard = self.shards[shard_id]
            shard.local_durable_seq = max(shard.local_durable_seq, seq)
        # The round ends with its local transaction; the Appends end on their own (each
        # advances the commit point as its answer comes). Waiting for them here held the next
        # round's writes back a whole follower round trip while the CPU sat partly idle.
        for shard in primaries:
            if shard.role is Role.PRIMARY:
                self._advance_commit(shard)

    def _send_to_followers(self, primaries: list[Shard], started: float) -> None:
        """An Append to each follower of the shards we lead that has none outstanding (one at
        a time per follower, so its stream's answers pair with our requests in order)."""
        followers = sorted({r for s in primaries for r in s.replicas if r != self.id})
        for follower in followers:
            if follower not in self._in_flight:
                self._in_flight.add(follower)
                task = asyncio.create_task(self._replicate_to(follower, primaries, started))
                self._sends.add(task)
                task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sends.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("replication send failed", exc_info=task.exception())

    async def _replicate_to(self, follower: str, primaries: list[Shard], started: float) -> None:
        try:
            await self._append_to(follower, primaries, started)
        finally:
            self._in_flight.discard(follower)
            answered, self._answered = self._answered, asyncio.Event()
            answered.set()  # a strong read waiting for its lease looks again

    async def _append_to(self, follower: str, primaries: list[Shard], started: float) -> None:
        if follower not in self.addrs:
            return
        sent: list[tuple[Shard, int]] = []
        request = pb.AppendRequest(primary=self.id)
        for shard in primaries:
            if follower not in shard.replicas or shard.role is not Role.PRIMARY:
                continue
            request.shards.append(self._append_for(shard, follower))
            sent.append((shard, shard.epoch))
        if not sent:
            return
        traced = [
            s.traced[e.seq] for s, _ in sent for e in _entries(request, s.id) if e.seq in s.traced
        ]
        try:
            with _within(traced, "kv.replicate", SpanKind.CLIENT, follower=follower):
                if traced:
                    propagate.inject(request.trace_context)
                reply = await self._append_on_stream(follower, request)
        except (grpc.aio.AioRpcError, TimeoutError, ConnectionError):
            self._drop_stream(follower)
            return  # the follower is down or slow; the next round tries again
        behind = False
        for (shard, epoch), result in zip(sent, reply.shards, strict=False):
            if shard.role is not Role.PRIMARY or shard.epoch != epoch:
                continue
            self._on_result(shard, follower, result, started)
            self._advance_commit(shard)
            behind |= shard.next_seq.get(follower, 0) <= shard.last_seq
        if behind:
            # Rounds skip a follower while its Append is out; entries sequenced meanwhile must
            # not wait for the idle tick to reach it.
            self._kick.set()

    async def _append_on_stream(
        self, follower: str, request: pb.AppendRequest
    ) -> pb.AppendResponse:
        """One Append over the follower's long-lived stream (opened on first use). One request
        is outstanding per follower at a time, so the next response is this request's."""
        call = self._streams.get(follower)
        if call is None or call.done():
            call = self._stub(follower).AppendStream()
            self._streams[follower] = call
        # asyncio.timeout, not wait_for: wait_for runs each step as a task of its own, a loop
        # turn more per step of every Append's round trip.
        async with asyncio.timeout(self.settings.replication_timeout_ms / 1000):
            await call.write(request)
            reply = await call.read()
        if not isinstance(reply, pb.AppendResponse):  # EOF: the follower ended the stream
            raise ConnectionError(f"{follower} closed the replication stream")
        return reply

    def _drop_stream(self, follower: str) -> None:
        call = self._streams.pop(follower, None)
        if call is not None:
            call.cancel()

    def _append_for(self, shard: Shard, follower: str) -> pb.ShardAppend:
        nxt = min(shard.next_seq.get(follower, shard.last_seq + 1), shard.last_seq + 1)
        prev = nxt - 1
        prev_epoch = shard.epoch_at(prev) if prev >= shard.tail_start - 1 else None
        msg = pb.ShardAppend(shard=shard.id, epoch=shard.epoch, commit_seq=shard.commit_seq)
        if prev_epoch is None:
            # What the follower needs is no longer in our log: it must copy a snapshot.
            # prev_seq tells it our log's floor, so a follower already past it just says where
            # it is instead of copying again.
            msg.snapshot_required = True
            msg.prev_seq = shard.tail_start - 1
            return msg
        msg.prev_seq, msg.prev_epoch = prev, prev_epoch
        upto = min(shard.last_seq, prev + self.settings.max_entries_per_append)
        if upto > prev:
            start = prev + 1 - shard.tail_start
            msg.entries.extend(shard.tail[start : start + (upto - prev)])
        return msg

    def _on_result(
        self, shard: Shard, follower: str, result: pb.ShardAppendResult, started: float
    ) -> None:
        if result.status == S.OK:
            shard.match_seq[follower] = max(shard.match_seq.get(follower, 0), result.durable_seq)
            shard.next_seq[follower] = result.durable_seq + 1
            shard.acked_at[follower] = max(shard.acked_at.get(follower, 0.0), started)
            acks = sorted(shard.acked_at.values(), reverse=True)
            needed = len(shard.replicas) // 2  # followers needed beside ourselves
            if needed and len(acks) >= needed:
                shard.lease_until = max(
                    shard.lease_until, acks[needed - 1] + self.lease_s * LEASE_SAFETY
                )
        elif result.status == S.STALE_EPOCH:
            if result.epoch > shard.epoch:
                self._step_down(shard, f"{follower} is at epoch {result.epoch}")
        elif result.status == S.MISMATCH:
            shard.next_seq[follower] = result.durable_seq + 1
            shard.match_seq[follower] = min(shard.match_seq.get(follower, 0), result.durable_seq)

    def _advance_commit(self, shard: Shard) -> None:
        acks = sorted(
            [
                shard.local_durable_seq,
                *(shard.match_seq.get(r, 0) for r in shard.replicas if r != self.id),
            ],
            reverse=True,
        )
        majority = len(shard.replicas) // 2 + 1
        if len(acks) < majority:
            return
        candidate = acks[majority - 1]
        # Only an entry of our own epoch commits by counting (Raft §5.4.2).
        if candidate > shard.commit_seq and shard.epoch_at(candidate) == shard.epoch:
            shard.commit_seq = candidate
        self._apply_committed(shard)

    def _apply_committed(self, shard: Shard) -> None:
        upto = shard.commit_seq
        while shard.applied_seq < upto:
            entry = shard.entry(shard.applied_seq + 1)
            assert entry is not None, (shard.id, shard.applied_seq + 1)
            effects = pb.LogPayload.FromString(entry.payload).effects
            shard.data.apply(effects)
            for item in effects:
                key = key_of(item.key)
                if key in shard.pending and shard.pending[key][0] <= entry.seq:
                    del shard.pending[key]  # no later sequenced write of this key is pending
                self._dirty_items.append(
                    ItemRow(
                        shard.id,
                        item.key.keyspace,
                        item.key.partition,
                        item.key.key,
                        item.value if item.found else None,
                        item.version,
                        item.expires_at_ms,
                    )
                )
            shard.applied_seq, shard.applied_epoch = entry.seq, entry.epoch
            shard.traced.pop(entry.seq, None)
        if self._dirty_items:
            self._meta(shard)
        if shard.waiters and shard.waiters[0].seq <= shard.applied_seq:
            now = time.perf_counter()
            if shard.commit_seconds is None:
                shard.commit_seconds = COMMIT_SECONDS.labels(str(shard.id))
            commit_seconds = shard.commit_seconds
            while shard.waiters and shard.waiters[0].seq <= shard.applied_seq:
                waiter = shard.waiters.popleft()
                if not waiter.future.done():
                    waiter.future.set_result(None)
                    if waiter.sequenced_at:
                        commit_seconds.observe(now - waiter.sequenced_at)

    # ------------------------------------------------------------------ follower side

    async def append(self, req: pb.AppendRequest) -> pb.AppendResponse:
        if not req.trace_context:
            with suppress_instrumentation():  # untraced rounds: no root spans for their SQL
                return await self._append(req)
        parent = propagate.extract(dict(req.trace_context))
        with TRACER.start_as_current_span("kv.append", parent, SpanKind.SERVER) as span:
            span.set_attributes({"mt.primary": req.primary, "mt.shards": len(req.shards)})
            return await self._append(req)

    async def _append(self, req: pb.AppendRequest) -> pb.AppendResponse:
        batch = Batch()
        results: list[pb.ShardAppendResult] = []
        applies: list[tuple[Shard, int]] = []
        now = time.monotonic()
        for sa in req.shards:
            shard = self.shard(sa.shard)
            result, apply_upto = self._follow(shard, sa, req.primary, now, batch)
            results.append(result)
            if apply_upto:
                applies.append((shard, apply_upto))
        await self.store.commit(batch)
        acked = time.monotonic()
        for shard, upto in applies:
            shard.commit_seq = max(shard.commit_seq, upto)
            self._apply_committed(shard)
        for sa, result in zip(req.shards, results, strict=True):
            if result.status == S.OK:
                shard = self.shards[sa.shard]
                shard.last_ack_at, shard.last_ack_primary = acked, req.primary
                if shard.applied_seq >= sa.commit_seq:
                    shard.fresh_at = now
        return pb.AppendResponse(shards=results)

    def _follow(
        self, shard: Shard, sa: pb.ShardAppend, primary: str, now: float, batch: Batch
    ) -> tuple[pb.ShardAppendResult, int]:
        def result(
            status: pb.ShardAppendResult.Status.ValueType, durable: int = 0
        ) -> tuple[pb.ShardAppendResult, int]:
            return pb.ShardAppendResult(
                shard=shard.id, status=status, durable_seq=durable, epoch=shard.epoch
            ), 0

        if sa.epoch < shard.epoch:
            return result(S.STALE_EPOCH)
        if sa.epoch > shard.epoch or shard.primary != primary:
            if (
                shard.last_ack_primary not in ("", primary)
                and now < shard.last_ack_at + self.lease_s
            ):
                return result(S.LEASE_WAIT)
            if shard.role is Role.PRIMARY:
                self._step_down(shard, f"{primary} leads epoch {sa.epoch}")
            shard.epoch, shard.primary, shard.role = sa.epoch, primary, Role.FOLLOWER
            batch.metas[shard.id] = ShardMeta(
                shard.id, shard.epoch, shard.primary, shard.applied_seq, shard.applied_epoch
            )
        if shard.role is Role.PRIMARY:
            return result(S.STALE_EPOCH)
        shard.role = Role.FOLLOWER
        if shard.snapshotting:
            return result(S.MISMATCH, shard.applied_seq)
        if sa.snapshot_required:
            if shard.applied_seq >= sa.prev_seq:
                return result(S.MISMATCH, shard.applied_seq)
            shard.snapshotting = True
            self._tasks.append(asyncio.create_task(self._pull_snapshot(shard, primary, sa.epoch)))
            return result(S.MISMATCH, shard.applied_seq)
        if sa.prev_seq > shard.last_seq:
            return result(
                S.MISMATCH,
                shard.last_seq if shard.epoch_at(shard.last_seq) is not None else shard.applied_seq,
            )
        if shard.epoch_at(sa.prev_seq) != sa.prev_epoch:
            return result(S.MISMATCH, shard.applied_seq)
        for entry in sa.entries:
            if entry.seq <= shard.last_seq:
                if shard.epoch_at(entry.seq) == entry.epoch:
                    continue
                shard.truncate_after(entry.seq - 1)
                batch.log_truncate_after[shard.id] = entry.seq - 1
            shard.append(entry)
            batch.log_appends.append(LogRow(shard.id, entry.seq, entry.epoch, entry.payload))
        matched = sa.prev_seq + len(sa.entries)
        status, _ = result(S.OK, matched)
        return status, min(sa.commit_seq, matched)

    async def _pull_snapshot(self, shard: Shard, primary: str, epoch: int) -> None:
        try:
            chunks = self._stub(primary).Snapshot(pb.SnapshotRequest(shard=shard.id, epoch=epoch))
            entries: list[tuple[KeyT, Entry]] = []
            rows: list[ItemRow] = []
            seq = seq_epoch = 0
            async for chunk in chunks:
                seq, seq_epoch = chunk.seq, chunk.seq_epoch
                for item in chunk.items:
                    key = key_of(item.key)
                    entries.append((key, Entry(item.value, item.version, item.expires_at_ms)))
                    rows.append(
                        ItemRow(shard.id, *key, item.value, item.version, item.expires_at_ms)
                    )
            shard.data.replace(entries)
            shard.reset(seq, seq_epoch)
            shard.applied_seq, shard.applied_epoch, shard.commit_seq = seq, seq_epoch, seq
            meta = ShardMeta(shard.id, shard.epoch, shard.primary, seq, seq_epoch)
            await self.store.commit(
                Batch(
                    replace_shards={shard.id: rows},
                    log_truncate_after={shard.id: -1},
                    metas={shard.id: meta},
                )
            )
            log.info(
                "snapshot installed", extra={"shard": shard.id, "seq": seq, "items": len(rows)}
            )
        except grpc.aio.AioRpcError as err:
            log.warning("snapshot failed", extra={"shard": shard.id, "error": err.code().name})
        finally:
            shard.snapshotting = False

    async def snapshot(self, req: pb.SnapshotRequest) -> AsyncIterator[pb.SnapshotChunk]:
        shard = self.shards.get(req.shard)
        if shard is None or shard.role is not Role.PRIMARY:
            raise FailedPrecondition("not the primary", code="not_primary")
        seq, seq_epoch = shard.applied_seq, shard.applied_epoch
        entries = list(shard.data.items.items())  # a copy: the primary keeps writing meanwhile
        for start in range(0, max(1, len(entries)), SNAPSHOT_CHUNK):
            chunk = entries[start : start + SNAPSHOT_CHUNK]
            yield pb.SnapshotChunk(
                seq=seq, seq_epoch=seq_epoch, items=[_item(k, e) for k, e in chunk]
            )

    # ------------------------------------------------------------------ TTL

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = now_ms()
            for shard in [s for s in self.shards.values() if s.role is Role.PRIMARY]:
                expired = shard.data.expired(now, 500)
                if expired:
                    effects = [_item(k, None, shard.last_seq + 1) for k, _ in expired]
                    self._sequence(shard, effects)
