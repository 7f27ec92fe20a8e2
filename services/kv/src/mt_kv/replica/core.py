"""The replica: sequencing and group commit as primary, log shipping as follower.

Write path (primary): validate, check conditions against committed data overlaid with the
writes already sequenced, assign the next seq, log the *effects* (an increment is logged as its
result), then wait. Everything sequenced in one event-loop turn goes out together: into the
local store (one transaction; while one is being written, what is sequenced meanwhile waits to
share the next — group commit without a timer) and, in one Append per follower, down each
follower's replication link (``link.py``), without waiting for the previous Append's answer (a
few may be out). An entry commits when a majority holds it and an entry of the current epoch
is at or past it (Raft's rule, so an old epoch's tail is never committed by counting); then it
is applied to the in-memory data and its writers are answered.

Leases: a follower that acknowledged a primary promises not to help another primary for
``lease`` seconds; a primary serves strong reads while a majority acknowledged it within the
lease (counted from when it *sent* the Append), so two primaries never both serve strong reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import msgpack
from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_core.rpc.client import untraced_channel
from mt_kv_contract.errors import (
    Behind,
    ConditionFailed,
    Indeterminate,
    Moved,
    NoQuorum,
    NotPrimary,
    StaleEpoch,
    TooStale,
    UnknownShard,
)
from mt_kv_contract.keys import MAX_BATCH, Key, microshard, validate_value
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, StatusCode
from prometheus_client import Gauge, Histogram

from mt_kv.data import (
    EXPIRES,
    META_KEYSPACE,
    MOVED,
    OUTBOX,
    VALUE,
    VERSION,
    Change,
    Entry,
    KeyT,
    decode_effects,
    encode_changes,
    key_of,
    moved_key,
    outbox_row_of,
    with_outbox_index,
)
from mt_kv.replica.checkpoint import Checkpointer
from mt_kv.replica.link import PeerLink, Sent
from mt_kv.replica.shard import Shard, Waiter
from mt_kv.rules.breaks import broken
from mt_kv.rules.follow import Admission
from mt_kv.rules.log import EPOCH, PAYLOAD, SEQ, LogRec
from mt_kv.rules.progress import Progress
from mt_kv.rules.shard import Role
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Batch, Durable, EpochRow, LogRow, Position

log = logging.getLogger(__name__)

S = pb.ShardAppendResult
SNAPSHOT_CHUNK = 1_000


TRACER = trace.get_tracer("mt_kv.replica")


def _open_span(traced: list[SpanContext], name: str, kind: SpanKind, **attrs: Any) -> Span | None:
    """A span for background work (a persist, an Append until its answer) in the trace of the
    first traced write it carries, linked to the others; None without any: an idle Append or
    an untraced write's persist starts no trace of its own (nor do its SQL statements)."""
    if not traced:
        return None
    parent = trace.set_span_in_context(NonRecordingSpan(traced[0]))
    links = [Link(c) for c in traced[1:33]]
    span = TRACER.start_span(name, parent, kind, links=links)
    span.set_attributes({f"mt.{k}": v for k, v in attrs.items()})
    span.set_attribute("mt.traced_writes", len(traced))
    return span


@dataclass(frozen=True, slots=True)
class _Part:
    """One shard's part of an Append in flight, to match its answer against."""

    shard: Shard
    epoch: int
    gen: int
    prev_seq: int


@dataclass(slots=True)
class _Note:
    """What a primary remembers of an Append in flight."""

    parts: list[_Part]
    span: Span | None = None


def _traced_in(shard: Shard, entries: Sequence[LogRec]) -> list[SpanContext]:
    """The traced writes among ``entries`` (their span contexts)."""
    return [shard.traced[e[SEQ]] for e in entries if e[SEQ] in shard.traced]


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


def to_item(key: KeyT, entry: Entry | None, version: int = 0) -> pb.Item:
    k = pb.Key(keyspace=key[0], partition=key[1], key=key[2])
    if entry is None:
        return pb.Item(key=k, found=False, version=version)
    return pb.Item(
        key=k,
        found=True,
        value=entry[VALUE],
        version=entry[VERSION],
        expires_at_ms=entry[EXPIRES],
    )


SnapshotSource = Callable[[str, pb.SnapshotRequest], AsyncIterator[pb.SnapshotChunk]]


class Replica:
    """The driver of one replica: the rules (``mt_kv.rules``) decide, this does the I/O —
    the store, the replication links, the writers waiting. Its clocks, its way to a peer's
    snapshot and its store are given, so a simulation can run it as it is."""

    def __init__(
        self,
        settings: ReplicaSettings,
        store: Durable,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_ms: Callable[[], int] = now_ms,
        snapshot_from: SnapshotSource | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._clock = clock
        self.wall_ms = wall_ms
        self._snapshot_from = snapshot_from or self._grpc_snapshot
        self.id = settings.replica_id
        self.store = store
        self.shards: dict[int, Shard] = {}
        self.addrs: dict[str, str] = {}  # replica -> gRPC address (snapshots)
        self.repl_addrs: dict[str, str] = {}  # replica -> replication link address
        self.lease_s = 1.0
        self._links: dict[str, PeerLink] = {}  # follower -> our link to it
        self._flush_scheduled = False
        self._persisting = False  # a local persist of ours is being written
        self._heartbeat_due = False  # the next flush asks every follower (lease in doubt)
        self._answered: asyncio.Event = asyncio.Event()  # replaced after each Append answer
        self._dirty_metas: set[int] = set()  # shards whose metadata the store lacks
        self._persist_task: asyncio.Task[None] | None = None
        self._checkpointer = Checkpointer(
            settings, store, self.shards, clock, rng or random.Random()
        )
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._keyspaces = settings.keyspaces()
        self._peer_overrides = settings.peer_overrides()
        self._peer_repl_overrides = settings.peer_repl_overrides()

    # ------------------------------------------------------------------ lifetime

    async def load(self) -> None:
        loaded = await self.store.load()
        for meta in loaded.metas.values():
            shard = self.shard(meta.shard)
            shard.epoch, shard.primary = meta.epoch, meta.primary
            shard.restarted_in = meta.epoch
            shard.applied_seq, shard.applied_epoch = meta.applied_seq, meta.applied_epoch
            shard.checkpoint_seq, shard.checkpoint_epoch = meta.applied_seq, meta.applied_epoch
            shard.restart_log(meta.applied_seq, meta.applied_epoch)
            shard.commit_seq = meta.applied_seq
        for shard_id, held in loaded.items.items():
            self.shard(shard_id).data.replace(held.items())
        for entry in loaded.log:
            shard = self.shard(entry.shard)
            if not shard.tail and entry.seq <= shard.applied_seq:
                shard.tail_start, shard.base_epoch = entry.seq, None  # older epochs unknown
            if entry.seq == shard.last_seq + 1:
                shard.tail.append((entry.seq, entry.epoch, entry.payload))
        for shard in self.shards.values():
            shard.durable_seq = shard.last_seq
        log.info(
            "replica loaded",
            extra={
                "shards": len(self.shards),
                "items": sum(map(len, loaded.items.values())),
                "log": len(loaded.log),
            },
        )

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._ticker(), name="kv-append-ticker"))
        self._tasks.append(asyncio.create_task(self._sweeper(), name="kv-ttl-sweeper"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for shard in self.shards.values():
            self._fail_waiters(shard, "replica stopping")
        for link in self._links.values():
            await link.close()
        for chan in self._channels.values():
            await chan.close()

    def shard(self, shard_id: int) -> Shard:
        if shard_id not in self.shards:
            self.shards[shard_id] = Shard(shard_id, me=self.id)
        return self.shards[shard_id]

    def _stub(self, replica_id: str) -> kv_pb2_grpc.ReplicationAsyncStub:
        """gRPC to a peer: only snapshots go this way (Appends take the replication link)."""
        addr = self.addrs[replica_id]
        if addr not in self._channels:
            self._channels[addr] = untraced_channel(
                addr,
                options=[
                    ("grpc.max_receive_message_length", 64 << 20),
                    ("grpc.max_send_message_length", 64 << 20),
                ],
            )
        return kv_pb2_grpc.ReplicationStub(self._channels[addr])

    def _grpc_snapshot(
        self, replica_id: str, request: pb.SnapshotRequest
    ) -> AsyncIterator[pb.SnapshotChunk]:
        return aiter(self._stub(replica_id).Snapshot(request))

    def _meta(self, shard: Shard) -> None:
        """The shard's epoch or primary changed: the log's next transaction writes them."""
        self._dirty_metas.add(shard.id)

    # ------------------------------------------------------------------ assignments

    def progress(self) -> list[pb.ShardProgress]:
        """Each shard's position for the shard manager: its log only as far as it is durable
        (the manager elects by it)."""
        self._export_lag()
        return [self._progress_of(s, self._clock()) for s in self.shards.values()]

    def _progress_of(self, s: Shard, now: float) -> pb.ShardProgress:
        last_epoch, last_seq = s.reported()
        fresh = now - s.fresh_at < self.settings.max_staleness_ms / 1000
        return pb.ShardProgress(
            shard=s.id,
            epoch=s.epoch,
            applied_seq=s.applied_seq,
            last_seq=last_seq,
            last_epoch=last_epoch,
            primary=s.role is Role.PRIMARY,
            serving=(s.role is Role.PRIMARY and now >= s.serving_after)
            or (s.role is Role.FOLLOWER and fresh),
        )

    def _export_lag(self) -> None:
        """Per shard we lead: how many entries each follower has yet to make durable."""
        for s in self.shards.values():
            if s.role is Role.PRIMARY:
                for follower in s.replicas:
                    if follower != self.id:
                        progress = s.progress.get(follower)
                        lag = s.last_seq - (progress.match_seq if progress else 0)
                        REPLICATION_LAG.labels(str(s.id), follower).set(lag)

    def assign(
        self,
        infos: Sequence[pb.ShardInfo],
        lease_ms: int,
        repl_addrs: dict[str, str] | None = None,
    ) -> None:
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
            if info.epoch > shard.epoch:  # fenced: no primary until the manager names one
                self._become(shard, Role.FOLLOWER, info.epoch, "", "a new epoch was assigned")
            if not info.primary:
                continue
            if info.primary == self.id:
                if (
                    shard.role is not Role.PRIMARY
                    and shard.primary == ""
                    and shard.may_lead(info.epoch)
                ):
                    self._promote(shard, info.epoch)
            elif shard.primary != info.primary:
                self._become(shard, Role.FOLLOWER, shard.epoch, info.primary, "another leads")
        self.addrs.update(self._peer_overrides)  # how we reach peers, where that differs
        self.repl_addrs.update(repl_addrs or {})
        self.repl_addrs.update(self._peer_repl_overrides)
        for follower, link in self._links.items():
            link.point_at(self.repl_addrs.get(follower, ""))

    def _promote(self, shard: Shard, epoch: int) -> None:
        with TRACER.start_as_current_span("kv.promote") as span:  # a failover: rare, worth a trace
            span.set_attributes({"mt.shard": shard.id, "mt.epoch": epoch, "mt.replica": self.id})
            span.add_event("failover")  # this replica takes the shard over in a new epoch
            self._become(shard, Role.PRIMARY, epoch, self.id, "elected")

    def _become(self, shard: Shard, role: Role, epoch: int, primary: str, why: str) -> None:
        """EVERY change of a shard's role, epoch or primary (:meth:`ShardCore.reset`), and what
        it asks of us: writers waiting on entries we sequenced learn their outcome is unknown;
        a new primary starts its epoch with an entry of its own."""
        reset = shard.reset(role, epoch, primary, self._clock(), self.lease_s)
        if reset.stepped_down:
            log.info("stepping down", extra={"shard": shard.id, "epoch": epoch, "why": why})
            shard.pending = {}
            shard.changes = {}  # entries we sequenced may yet be replaced: decode what commits
            self._fail_waiters(shard, why)
        if reset.moved:
            self._meta(shard)
        if role is Role.PRIMARY:
            self._lead(shard)

    def _lead(self, shard: Shard) -> None:
        for follower in shard.progress:
            self._link(follower)
        shard.pending = {}
        for seq in range(shard.applied_seq + 1, shard.last_seq + 1):
            entry = shard.entry(seq)
            assert entry is not None
            self._add_pending(shard, seq, decode_effects(entry[PAYLOAD]))
        # An entry of the new epoch lets the inherited tail commit (Raft §5.4.2); strong reads
        # wait until it is applied, so they see every write the previous primaries committed.
        shard.epoch_start_seq = 0 if broken("skip_first_entry") else self._sequence(shard, [])
        log.info(
            "primary", extra={"shard": shard.id, "epoch": shard.epoch, "last_seq": shard.last_seq}
        )

    def _fail_waiters(self, shard: Shard, why: str) -> None:
        while shard.waiters:
            waiter = shard.waiters.popleft()
            if not waiter.future.done():
                # Sequenced but not known to be committed: it may still commit under the next
                # primary, so the caller must treat the outcome as unknown.
                waiter.future.set_exception(Indeterminate(f"outcome unknown: {why}"))

    # ------------------------------------------------------------------ client API

    def _primary_shard(self, route: pb.Route) -> Shard:
        shard = self.shards.get(route.shard)
        if shard is None or shard.role is not Role.PRIMARY:
            raise NotPrimary(f"{self.id} is not the primary of shard {route.shard}")
        if route.epoch and route.epoch != shard.epoch:
            raise StaleEpoch(f"shard {route.shard} is at epoch {shard.epoch}, not {route.epoch}")
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
        now = self.wall_ms()
        for cond in req.conditions:
            self._check(shard, cond, now)
        effects, changes = self._effects(shard, req.mutations, now)
        seq = self._sequence(shard, changes)
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
        return response, self._committed(shard, seq)

    @staticmethod
    def _committed(shard: Shard, seq: int) -> asyncio.Future[None]:
        """A future that resolves once our entry ``seq`` is committed and applied."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.waiters.append(Waiter(seq, future, time.perf_counter()))
        return future

    def _check(self, shard: Shard, cond: pb.Condition, now: int) -> None:
        self._validate_key(cond.key)
        self._refuse_moved(shard, key_of(cond.key), sequencing=True)
        current = shard.view(key_of(cond.key), now)
        held = {
            pb.Condition.ABSENT: current is None,
            pb.Condition.PRESENT: current is not None,
            pb.Condition.VERSION_EQUALS: (current[VERSION] if current else 0) == cond.version,
        }.get(cond.kind)
        if held is None:
            raise InvalidArgument("condition kind is required", code="invalid_condition")
        if not held:
            raise ConditionFailed(
                f"condition {pb.Condition.Kind.Name(cond.kind)} failed on "
                f"{cond.key.keyspace}/{cond.key.partition!r}/{cond.key.key!r}"
            )

    @staticmethod
    def _refuse_moved(shard: Shard, key: KeyT, *, sequencing: bool) -> None:
        """Refuse a key whose μshard has moved to another shard (live resharding): for a
        write, as of everything sequenced (a fence not yet committed counts); for a read, as
        of the data it is served from. No moves, no cost: ``microshards`` stays 0."""
        count = shard.data.microshards or shard.move_hint
        if not count:
            return
        u = microshard(key[0], key[1], count)
        gone = shard.view(moved_key(u), 0) is not None if sequencing else u in shard.data.moved
        if gone:
            raise Moved(f"μshard {u} has moved from shard {shard.id}; refresh the routing table")

    def _validate_key(self, key: pb.Key) -> None:
        Key(key.keyspace, key.partition, key.key).validate()
        if key.keyspace not in self._keyspaces:
            raise InvalidArgument(f"unknown keyspace {key.keyspace!r}", code="unknown_keyspace")

    def _effects(
        self, shard: Shard, mutations: Sequence[pb.Mutation], now: int
    ) -> tuple[list[pb.Item], list[Change]]:
        """What the mutations do, as log items (for the payload and the answer) and as the
        changes to apply."""
        seq = shard.last_seq + 1
        # Above every version a key brought from another shard carries (see VERSION_FLOOR).
        version = seq + shard.version_floor()
        local: dict[KeyT, Entry | None] = {}
        effects: list[pb.Item] = []
        for m in mutations:
            self._validate_key(m.key)
            key = key_of(m.key)
            self._refuse_moved(shard, key, sequencing=True)
            op = m.WhichOneof("op")
            if op == "put":
                validate_value(m.put.value)
                expires = now + m.put.ttl_ms if m.put.ttl_ms else 0
                new: Entry | None = (m.put.value, version, expires)
            elif op == "delete":
                new = None
            elif op == "increment":
                current = local[key] if key in local else shard.view(key, now)
                try:
                    base = int(current[VALUE]) if current is not None else 0
                except ValueError:
                    raise FailedPrecondition(
                        "increment of a value that is not an integer", code="not_a_counter"
                    ) from None
                new = (str(base + m.increment.delta).encode(), version, 0)
            else:
                raise InvalidArgument(
                    "a mutation needs put, delete or increment", code="invalid_mutation"
                )
            local[key] = new
            effects.append(to_item(key, new, version))
        return effects, list(local.items())

    def _sequence(self, shard: Shard, changes: list[Change]) -> int:
        """Append ``changes`` (every change a primary makes comes through here) as the next
        entry; followers apply the entry's changes as they are, index included."""
        changes = with_outbox_index(changes)
        seq = shard.propose(encode_changes(changes))[SEQ]
        shard.changes[seq] = changes
        context = trace.get_current_span().get_span_context()
        if context.trace_flags.sampled:
            shard.traced[seq] = context
        self._add_pending(shard, seq, changes)
        self._schedule_flush()
        return seq

    @staticmethod
    def _add_pending(shard: Shard, seq: int, changes: Sequence[Change]) -> None:
        pending = shard.pending
        for key, new in changes:
            pending[key] = (seq, new)
            if key[0] == META_KEYSPACE and key[1] == MOVED and new is not None:
                # A fence not yet applied: new writes must look for fences (_refuse_moved).
                shard.move_hint = int(new[VALUE].split(b"/")[1])

    async def commit(self, shard: Shard, changes: list[Change]) -> int:
        """Sequence ``changes`` (made by the KV itself: live resharding) as one entry and
        wait until it is committed and applied; its seq."""
        seq = self._sequence(shard, changes)
        await self._committed(shard, seq)
        return seq

    async def _readable(self, shard_id: int, read: pb.ReadOptions, route_epoch: int) -> Shard:
        """The shard if this replica may serve ``read`` now, waiting briefly where useful."""
        shard = self.shards.get(shard_id)
        if shard is None:
            raise UnknownShard(f"shard {shard_id} is unknown here")
        consistency = read.consistency or pb.STRONG
        if consistency == pb.STRONG:
            shard = self._primary_shard(pb.Route(shard=shard_id, epoch=route_epoch))
            await self._ensure_lease(shard)
            return shard
        if read.HasField("min_version"):  # RYW's token, or a μshard import (min_read_seq)
            token = read.min_version
            if shard.applied_seq < token.seq:
                if shard.role is not Role.PRIMARY or token.seq > shard.last_seq:
                    raise Behind(
                        f"{self.id} has applied shard {shard_id} to {shard.applied_seq}, "
                        f"not {token.seq}"
                    )
                await self._await_applied(shard, token.seq)
            if consistency == pb.READ_YOUR_WRITES:
                return shard
        # Bounded staleness (and RYW without a token).
        if shard.role is Role.PRIMARY:
            return shard
        bound_s = (read.max_staleness_ms or self.settings.max_staleness_ms) / 1000
        if self._clock() - shard.fresh_at <= bound_s:
            return shard
        raise TooStale(f"{self.id} is too stale for shard {shard_id}")

    async def _await_applied(self, shard: Shard, seq: int) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.waiters.append(Waiter(seq, future))
        self._schedule_flush()
        await future

    async def _ensure_lease(self, shard: Shard) -> None:
        now = self._clock()
        if now < shard.serving_after:
            # A new primary honours the lease it promised the previous one.
            await asyncio.sleep(shard.serving_after - now)
        for _ in range(3):
            if shard.role is not Role.PRIMARY:
                raise NotPrimary(f"{self.id} lost shard {shard.id}")
            if shard.may_serve_strong(self._clock()):
                if shard.applied_seq < shard.epoch_start_seq:
                    await self._await_applied(shard, shard.epoch_start_seq)
                return
            # The lease is in doubt: an Append to every follower settles it.
            self._heartbeat_due = True
            self._schedule_flush()
            await self._next_answer()
        raise NoQuorum(f"shard {shard.id} has no quorum")

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
        now = self.wall_ms()
        items = []
        for key in req.keys:
            self._validate_key(key)
            k = key_of(key)
            self._refuse_moved(shard, k, sequencing=False)
            items.append(to_item(k, shard.data.get(k, now)))
        return pb.GetResponse(items=items, served_at=self._position(shard))

    async def scan(self, req: pb.ScanRequest) -> pb.ScanResponse:
        shard = await self._readable(req.route.shard, req.read, req.route.epoch)
        if req.outbox:
            return self._scan_outbox(shard, req)
        self._validate_key(pb.Key(keyspace=req.keyspace, partition=req.partition, key=req.prefix))
        self._refuse_moved(shard, (req.keyspace, req.partition, b""), sequencing=False)
        limit = min(req.limit or 100, MAX_BATCH)
        try:
            after = bytes.fromhex(req.cursor) if req.cursor else None
        except ValueError:
            raise InvalidArgument("malformed scan cursor", code="invalid_cursor") from None
        found, more = shard.data.scan(
            req.keyspace, req.partition, req.prefix, after, limit, req.reverse, self.wall_ms()
        )
        items = [to_item(k, e) for k, e in found]
        cursor = found[-1][0][2].hex() if more and found else ""
        return pb.ScanResponse(items=items, next_cursor=cursor, served_at=self._position(shard))

    def _scan_outbox(self, shard: Shard, req: pb.ScanRequest) -> pb.ScanResponse:
        """A page of the shard's outbox index: the keys of its job rows (values left out)."""
        limit = min(req.limit or 100, MAX_BATCH)
        try:
            after = bytes.fromhex(req.cursor) if req.cursor else None
        except ValueError:
            raise InvalidArgument("malformed scan cursor", code="invalid_cursor") from None
        now = self.wall_ms()
        found, more = shard.data.scan(META_KEYSPACE, OUTBOX, b"", after, limit, False, now)
        items = []
        for (_, _, packed), entry in found:
            keyspace, partition, key = outbox_row_of(packed)
            items.append(
                pb.Item(
                    key=pb.Key(keyspace=keyspace, partition=partition, key=key), version=entry[1]
                )
            )
        cursor = found[-1][0][2].hex() if more and found else ""
        return pb.ScanResponse(items=items, next_cursor=cursor, served_at=self._position(shard))

    def _position(self, shard: Shard) -> pb.Version:
        return pb.Version(shard=shard.id, epoch=shard.epoch, seq=shard.applied_seq)

    # ------------------------------------------------------------------ group commit (primary)

    def _schedule_flush(self) -> None:
        """Flush once this event-loop turn is over: what was sequenced in it goes out together
        (one local transaction, one Append per follower)."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        heartbeat, self._heartbeat_due = self._heartbeat_due, False
        self._persist()
        for link in self._links.values():
            self._pump(link, heartbeat)

    async def _ticker(self) -> None:
        """Every ``append_interval_ms``: an Append to every follower even with nothing new
        (the lease, the commit point), applied effects and log trims to the store, and an end
        to links whose answers are overdue."""
        interval = self.settings.append_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            now = self._clock()
            for link in list(self._links.values()):
                link.check_overdue(now)
            self._checkpointer.maybe_start(now)
            self._persist(everything=True)
            self._heartbeat_due = True
            self._schedule_flush()

    def _persist(self, everything: bool = False) -> None:
        """Start writing our new log entries to the local store (with the applied effects,
        shard metadata and log trims gathered so far) unless a persist of ours is being
        written: what is sequenced meanwhile waits to share the next. Without new entries the
        rest waits for the ticker (``everything``) or a follower's transaction."""
        if self._persisting:
            return
        fresh = [s for s in self.shards.values() if s.role is Role.PRIMARY and s.unpersisted]
        if not fresh and not (everything and self._dirty_metas):
            return
        batch = Batch()
        persisted: dict[int, tuple[int, int]] = {}  # shard -> (seq, epoch) written
        traced: list[SpanContext] = []
        for shard in fresh:
            if shard.traced:
                traced += _traced_in(shard, shard.unpersisted)
            batch.log_appends += [LogRow(shard.id, *e) for e in shard.unpersisted]
            persisted[shard.id] = shard.unpersisted[-1][SEQ], shard.unpersisted[-1][EPOCH]
            if broken("ack_before_sync"):
                shard.persisted(*persisted[shard.id])
            shard.unpersisted = []
        self._take_metadata(batch)
        if batch.empty():
            return
        span = _open_span(traced, "kv.persist", SpanKind.INTERNAL, entries=len(batch.log_appends))
        if span is None:
            written = self.store.submit(batch)
        else:
            with trace.use_span(span, end_on_exit=False):
                written = self.store.submit(batch)  # in the span's context: its SQL joins it
        self._persisting = True
        self._persist_task = asyncio.create_task(self._persisted(written, persisted, span))

    async def _persisted(
        self,
        written: asyncio.Future[None],
        persisted: dict[int, tuple[int, int]],
        span: Span | None,
    ) -> None:
        try:
            await written
        except Exception as err:
            # The store failing means we cannot promise durability: stop being anyone's
            # primary rather than acknowledge what may be lost.
            log.exception("persist failed")
            if span is not None:
                span.set_status(StatusCode.ERROR, repr(err))
            for shard in self.shards.values():
                if shard.role is Role.PRIMARY:
                    self._become(shard, Role.FOLLOWER, shard.epoch, shard.primary, "persist failed")
            return
        finally:
            if span is not None:
                span.end()
            self._persisting = False
        for shard_id, (seq, epoch) in persisted.items():
            shard = self.shards[shard_id]
            shard.persisted(seq, epoch)
            if shard.role is Role.PRIMARY:
                self._advance_commit(shard)
        self._persist()

    def _take_metadata(self, batch: Batch) -> None:
        """Into ``batch``: the shards' epochs and primaries the log lacks, and log trims —
        never past a committed checkpoint, so the log keeps whatever the items lack."""
        for shard_id in self._dirty_metas:
            s = self.shards[shard_id]
            batch.epochs[shard_id] = EpochRow(s.id, s.epoch, s.primary)
        self._dirty_metas = set()
        for shard in self.shards.values():
            floor = min(shard.trim(self.settings.log_retention_entries), shard.checkpoint_seq)
            if floor - shard.store_floor >= 1_000:
                batch.log_trim_upto[shard.id] = shard.store_floor = floor

    def _link(self, follower: str) -> PeerLink:
        link = self._links.get(follower)
        if link is None:
            timeout_s = self.settings.replication_timeout_ms / 1000
            link = self._links[follower] = PeerLink(follower, self, timeout_s, clock=self._clock)
            link.point_at(self.repl_addrs.get(follower, ""))
        return link

    def _pump(self, link: PeerLink, heartbeat: bool = False) -> None:
        """Send the follower, in one Append, what it has not been sent of every shard we lead
        there — if its link has room. With ``heartbeat``, every shard even with nothing new
        (the lease, the commit point: otherwise the commit point only travels with entries —
        an Append just for it after every answer doubled the Appends under load)."""
        if not link.connected or len(link.in_flight) >= self.settings.appends_in_flight:
            return
        now = self._clock()
        request = pb.AppendRequest(primary=self.id)
        parts: list[_Part] = []
        traced: list[SpanContext] = []
        for shard in self.shards.values():
            progress = shard.progress.get(link.follower)
            if progress is None or shard.role is not Role.PRIMARY:
                continue
            if not progress.may_send(now):
                continue
            msg, sent = self._append_for(shard, progress)
            if not (sent or msg.snapshot_required or progress.probing or heartbeat):
                continue
            request.shards.append(msg)
            parts.append(_Part(shard, shard.epoch, progress.gen, msg.prev_seq))
            progress.sent(sent[-1][SEQ] if sent else None)
            if sent and shard.traced:
                traced += _traced_in(shard, sent)
        if not parts:
            return
        span = _open_span(traced, "kv.replicate", SpanKind.CLIENT, follower=link.follower)
        if span is not None:
            propagate.inject(request.trace_context, trace.set_span_in_context(span))
        link.send(request, _Note(parts, span))

    def _append_for(self, shard: Shard, progress: Progress) -> tuple[pb.ShardAppend, list[LogRec]]:
        msg, sent = shard.append_for(progress, self.settings.max_entries_per_append)
        if sent:
            msg.entries = msgpack.packb(sent)
        return msg, sent

    # The replication link's owner (see link.LinkOwner).

    def on_connected(self, link: PeerLink) -> None:
        self._schedule_flush()

    def on_lost(self, link: PeerLink, unanswered: list[Sent]) -> None:
        """What was in flight may or may not have arrived: find out where the follower's log
        stands before streaming to it again."""
        for sent in unanswered:
            note: _Note = sent.note
            if note.span is not None:
                note.span.set_status(StatusCode.ERROR, "replication link lost")
                note.span.end()
        for shard in self.shards.values():
            progress = shard.progress.get(link.follower)
            if progress is not None and shard.role is Role.PRIMARY:
                progress.link_lost(shard.last_seq)
        self._signal_answered()

    def on_answer(self, link: PeerLink, sent: Sent, answer: pb.AppendResponse) -> None:
        note: _Note = sent.note
        for part, result in zip(note.parts, answer.shards, strict=False):
            shard = part.shard
            progress = shard.progress.get(link.follower)
            if progress is None or shard.role is not Role.PRIMARY or shard.epoch != part.epoch:
                continue  # an answer about an epoch we no longer lead
            self._on_result(shard, progress, part, result, sent.at)
            if shard.role is Role.PRIMARY:
                self._advance_commit(shard)
        if note.span is not None:
            note.span.end()
        self._signal_answered()
        self._schedule_flush()

    def _signal_answered(self) -> None:
        answered, self._answered = self._answered, asyncio.Event()
        answered.set()  # a strong read waiting for its lease looks again

    def _on_result(
        self, shard: Shard, progress: Progress, part: _Part, result: S, sent_at: float
    ) -> None:
        later = shard.on_result(
            progress,
            result,
            gen=part.gen,
            prev_seq=part.prev_seq,
            sent_at=sent_at,
            now=self._clock(),
            lease_s=self.lease_s,
            hold_s=self.settings.append_interval_ms / 1000,  # a probe that would spin: next tick
        )
        if later:
            why = f"a follower is at epoch {result.epoch}"
            self._become(shard, Role.FOLLOWER, shard.epoch, shard.primary, why)

    def _advance_commit(self, shard: Shard) -> None:
        shard.advance_commit()
        self._apply_committed(shard)

    def _apply_committed(self, shard: Shard) -> None:
        upto = shard.commit_seq
        pending, dirty, data = shard.pending, shard.dirty, shard.data
        while shard.applied_seq < upto:
            entry = shard.entry(shard.applied_seq + 1)
            assert entry is not None, (shard.id, shard.applied_seq + 1)
            changes = shard.changes.pop(entry[SEQ], None) or decode_effects(entry[PAYLOAD])
            data.apply(changes)
            dirty.update(changes)
            if pending:
                for key, _ in changes:
                    if key in pending and pending[key][0] <= entry[SEQ]:
                        del pending[key]  # no later sequenced write of this key is pending
            shard.applied_seq, shard.applied_epoch = entry[SEQ], entry[EPOCH]
            if shard.traced:
                shard.traced.pop(entry[SEQ], None)
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

    async def append_batch(self, requests: list[pb.AppendRequest]) -> list[pb.AppendResponse]:
        """Requests that came down one primary's link, in order: check and log each, make them
        all durable in one transaction, then apply what is committed and answer each."""
        now = self._clock()
        batches: list[Batch] = []
        handled: list[tuple[pb.AppendRequest, list[S], Span | None]] = []
        applies: list[tuple[Shard, int]] = []
        followed: dict[int, Shard] = {}
        for req in requests:
            span = None
            if req.trace_context:
                parent = propagate.extract(dict(req.trace_context))
                span = TRACER.start_span("kv.append", parent, SpanKind.SERVER)
                span.set_attributes({"mt.primary": req.primary, "mt.shards": len(req.shards)})
            batch = Batch()
            results: list[S] = []
            for sa in req.shards:
                shard = self.shard(sa.shard)
                result, apply_upto = self._follow(shard, sa, req.primary, now, batch)
                results.append(result)
                if result.status == S.OK:
                    followed[shard.id] = shard
                if apply_upto:
                    applies.append((shard, apply_upto))
            batches.append(batch)
            handled.append((req, results, span))
        # Once this transaction is synced, so is each log as it is now (the store's
        # transactions commit in order: those queued before it are synced too) — with the
        # entries it sequenced as primary and never stored, if it has any.
        leftover = Batch()
        for shard in followed.values():
            leftover.log_appends += [LogRow(shard.id, *e) for e in shard.unpersisted]
            shard.unpersisted = []
        batches.insert(0, leftover)
        written = {sid: (shard.last_seq, shard.last_epoch) for sid, shard in followed.items()}
        tail = Batch()
        self._take_metadata(tail)  # last: the epochs as they are after these requests
        spans = [span for *_, span in handled if span is not None]
        try:
            if broken("ack_before_sync"):
                self.store.submit(*batches, tail)  # (answered before the store synced it)
            elif spans:
                with trace.use_span(spans[0], end_on_exit=False):
                    await self.store.commit(*batches, tail)
            else:
                await self.store.commit(*batches, tail)
        except Exception as err:
            for span in spans:
                span.set_status(StatusCode.ERROR, repr(err))
                span.end()
            raise
        for shard_id, (seq, epoch) in written.items():
            self.shards[shard_id].persisted(seq, epoch)
        acked = self._clock()
        for shard, upto in applies:
            shard.commit_seq = max(shard.commit_seq, upto)
            self._apply_committed(shard)
        answers: list[pb.AppendResponse] = []
        for req, results, span in handled:
            for sa, result in zip(req.shards, results, strict=True):
                if result.status == S.OK:
                    shard = self.shards[sa.shard]
                    shard.acknowledged(req.primary, acked)
                    if shard.applied_seq >= sa.commit_seq:
                        shard.fresh_at = now
            answers.append(pb.AppendResponse(shards=results))
            if span is not None:
                span.end()
        return answers

    def _follow(
        self, shard: Shard, sa: pb.ShardAppend, primary: str, now: float, batch: Batch
    ) -> tuple[pb.ShardAppendResult, int]:
        def result(
            status: pb.ShardAppendResult.Status.ValueType, durable: int = 0
        ) -> tuple[pb.ShardAppendResult, int]:
            return pb.ShardAppendResult(
                shard=shard.id, status=status, durable_seq=durable, epoch=shard.epoch
            ), 0

        admission = shard.admission(primary, sa.epoch, now, self.lease_s)
        if admission is Admission.STALE_EPOCH:
            return result(S.STALE_EPOCH)
        if admission is Admission.LEASE_WAIT:
            return result(S.LEASE_WAIT)
        if shard.role is not Role.FOLLOWER or admission is Admission.ADOPT:
            self._become(shard, Role.FOLLOWER, sa.epoch, primary, f"{primary} leads")
        if shard.snapshotting:
            return result(S.MISMATCH, shard.applied_seq)
        if sa.snapshot_required:
            if shard.applied_seq >= sa.prev_seq:
                return result(S.MISMATCH, shard.applied_seq)
            shard.snapshotting = True
            self._tasks.append(asyncio.create_task(self._pull_snapshot(shard, primary, sa.epoch)))
            return result(S.MISMATCH, shard.applied_seq)
        entries: tuple[LogRec, ...] = (
            msgpack.unpackb(sa.entries, use_list=False) if sa.entries else ()
        )
        fitted = shard.fit(sa, entries)
        if not fitted.ok:
            return result(S.MISMATCH, fitted.durable_hint)
        if fitted.truncate_after is not None:
            shard.changes.clear()  # ours no more (we were its primary, in another epoch)
            batch.log_truncate_after[shard.id] = fitted.truncate_after
        batch.log_appends += [LogRow(shard.id, *entry) for entry in fitted.append]
        status, _ = result(S.OK, fitted.durable_hint)
        return status, min(sa.commit_seq, fitted.durable_hint)

    async def _pull_snapshot(self, shard: Shard, primary: str, epoch: int) -> None:
        try:
            chunks = self._snapshot_from(primary, pb.SnapshotRequest(shard=shard.id, epoch=epoch))
            entries: list[tuple[KeyT, Entry]] = []
            seq = seq_epoch = 0
            async for chunk in chunks:
                seq, seq_epoch = chunk.seq, chunk.seq_epoch
                for item in chunk.items:
                    key = key_of(item.key)
                    entries.append((key, (item.value, item.version, item.expires_at_ms)))
            await self._checkpointer.wait_idle()  # none may write this shard's old items now
            shard.data.replace(entries)
            shard.restart_log(seq, seq_epoch)
            # Until the install is stored, a crash leaves the old checkpoint and no log past it.
            shard.durable_seq = min(shard.durable_seq, shard.checkpoint_seq)
            shard.applied_seq, shard.applied_epoch, shard.commit_seq = seq, seq_epoch, seq
            shard.dirty = {}  # the snapshot replaces the shard's items whole
            # The old log goes first: a crash before the items are replaced leaves the old
            # items and no log past them, so the primary sends a snapshot again.
            epoch_row = EpochRow(shard.id, shard.epoch, shard.primary)
            await self.store.commit(
                Batch(log_truncate_after={shard.id: -1}, epochs={shard.id: epoch_row})
            )
            position = Position(shard.id, seq, seq_epoch)
            await self.store.replace_shard(shard.id, dict(entries), position)
            shard.persisted(seq, seq_epoch)
            self._checkpointer.replaced(shard, len(entries))
            shard.checkpoint_seq, shard.checkpoint_epoch = seq, seq_epoch
            log.info(
                "snapshot installed", extra={"shard": shard.id, "seq": seq, "items": len(entries)}
            )
        except (grpc.aio.AioRpcError, ConnectionError) as err:
            log.warning("snapshot failed", extra={"shard": shard.id, "error": repr(err)})
        finally:
            shard.snapshotting = False

    async def snapshot(self, req: pb.SnapshotRequest) -> AsyncIterator[pb.SnapshotChunk]:
        shard = self.shards.get(req.shard)
        if shard is None or shard.role is not Role.PRIMARY:
            raise NotPrimary("not the primary")
        seq, seq_epoch = shard.applied_seq, shard.applied_epoch
        entries = list(shard.data.items.items())  # a copy: the primary keeps writing meanwhile
        for start in range(0, max(1, len(entries)), SNAPSHOT_CHUNK):
            chunk = entries[start : start + SNAPSHOT_CHUNK]
            yield pb.SnapshotChunk(
                seq=seq, seq_epoch=seq_epoch, items=[to_item(k, e) for k, e in chunk]
            )

    # ------------------------------------------------------------------ TTL

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.wall_ms()
            for shard in [s for s in self.shards.values() if s.role is Role.PRIMARY]:
                expired = shard.data.expired(now, 500)
                if expired:
                    self._sequence(shard, [(k, None) for k, _ in expired])
