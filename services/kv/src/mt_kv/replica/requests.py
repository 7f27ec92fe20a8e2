"""The replica's client API: writes (check, sequence, wait for the commit) and reads (strong
under the primary's lease, read-your-writes, bounded staleness). Nothing here does I/O: a
sequenced write goes out with the next group-commit flush (``leading.py``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence

from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_kv_contract.errors import (
    Behind,
    ConditionFailed,
    Moved,
    NoQuorum,
    NotPrimary,
    StaleEpoch,
    TooStale,
    UnknownShard,
)
from mt_kv_contract.keys import MAX_BATCH, Key, microshard, validate_value
from mt_proto import kv_pb2 as pb
from opentelemetry import trace

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
    encode_changes,
    key_of,
    moved_key,
    outbox_row_of,
    with_outbox_index,
)
from mt_kv.replica.base import ReplicaBase
from mt_kv.replica.shard import Shard, Waiter
from mt_kv.rules.breaks import broken
from mt_kv.rules.log import SEQ
from mt_kv.rules.sessions import answer, check_age, record, record_key
from mt_kv.rules.shard import Role


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


def _keyspaces(keys: Iterable[pb.Key]) -> dict[str, int]:
    """How many of ``keys`` each keyspace has (what a request is charged, see quotas.py)."""
    counts: dict[str, int] = {}
    for key in keys:
        keyspace = key.keyspace
        counts[keyspace] = counts.get(keyspace, 0) + 1
    return counts


class Requests(ReplicaBase):
    """The replica's client API (a part of :class:`mt_kv.replica.core.Replica`)."""

    def _primary_shard(self, route: pb.Route) -> Shard:
        shard = self.shards.get(route.shard)
        if shard is None or shard.role is not Role.PRIMARY:
            raise NotPrimary(f"{self.id} is not the primary of shard {route.shard}")
        if not shard.sequencing():
            raise NotPrimary(f"{self.id} is handing shard {route.shard} over")
        # (a route of an epoch we continued in place names us as rightly as the latest)
        if route.epoch and not shard.led_from <= route.epoch <= shard.epoch:
            raise StaleEpoch(f"shard {route.shard} is at epoch {shard.epoch}, not {route.epoch}")
        return shard

    async def over_quota(self, writes: Sequence[pb.WriteRequest]) -> None:
        """Hold ``writes`` for the next over-quota turn if every keyspace they write is at its
        quota (and would be admitted now): a keyspace asking for more than its quota slows
        itself. What one turn holds is sequenced together — one log transaction, one Append
        per follower, one fsync on each replica — where each of its requests, a few keys
        apiece, cost all of those alone (the quota admits a quarter of the batched peak; in
        small requests that was the rest of a 2-core box). A refusal still comes at once."""
        if not self.quotas.buckets or not self.settings.over_quota_turn_ms:
            return
        if not self.quotas.pressed({m.key.keyspace for w in writes for m in w.mutations}):
            return
        turn = self._over_quota_turn
        if turn is None:
            loop = asyncio.get_running_loop()
            turn = self._over_quota_turn = loop.create_future()
            loop.call_later(self.settings.over_quota_turn_ms / 1000, self._end_over_quota_turn)
        await asyncio.shield(turn)  # (one caller going away must not end the turn for all)

    def _end_over_quota_turn(self) -> None:
        turn, self._over_quota_turn = self._over_quota_turn, None
        if turn is not None and not turn.done():
            turn.set_result(None)

    async def write(self, req: pb.WriteRequest) -> pb.WriteResponse:
        await self.over_quota([req])
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
        if req.session:
            first = self._first_outcome(shard, req, now)
            if first is not None:  # (a repeat is answered, never refused or charged)
                return first
        self.quotas.admit(_keyspaces(m.key for m in req.mutations))
        if self.quotas.full:
            growing = (m.key.keyspace for m in req.mutations if not m.HasField("delete"))
            self.quotas.admit_growth(growing)
        self.served.count(shard.id, (m.key for m in req.mutations))
        for cond in req.conditions:
            self._check(shard, cond, now)
        effects, changes = self._effects(shard, req.mutations, now)
        if req.session:
            changes.append(self._session_record(shard, req, effects, now))
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

    def _first_outcome(
        self, shard: Shard, req: pb.WriteRequest, now: int
    ) -> tuple[pb.WriteResponse, asyncio.Future[None] | None] | None:
        """A repeat of a session's write (exactly-once, ``rules/sessions.py``): the first
        outcome, once its entry is committed; None if this is the first we hear of it."""
        held = (
            None
            if broken("forget_sessions")
            else shard.view(record_key(req.session, req.session_seq), now)
        )
        if held is None:
            check_age(req, now, self.settings.session_ttl_ms)
            return None
        response, seq = answer(shard.id, held, req)
        if seq <= shard.applied_seq or req.durability == pb.FAST_ACK:
            return response, None
        return response, self._committed(shard, seq)

    def _session_record(
        self, shard: Shard, req: pb.WriteRequest, effects: Sequence[pb.Item], now: int
    ) -> Change:
        """The record of this write's outcome, logged in its entry (the next one)."""
        seq = shard.last_seq + 1
        held = record(shard.epoch, seq, effects, req.mutations)
        version = seq + shard.version_floor()
        key = record_key(req.session, req.session_seq)
        return key, (held, version, now + self.settings.session_ttl_ms)

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
        wait until it is committed and applied; its seq. Refused unless still the shard's
        primary: the caller checked that before awaiting (a μshard's keys read), and only a
        primary may add to the log (a deposed one's entry would differ from the log its
        successor commits at that seq: ``make sim`` found it)."""
        deposed = not shard.sequencing() or self.shards.get(shard.id) is not shard
        if deposed and not broken("commit_when_deposed"):
            raise NotPrimary(f"{self.id} is no longer the primary of shard {shard.id}")
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
        if shard.role is Role.PRIMARY:
            self.quotas.admit(_keyspaces(req.keys))
            self.served.count(shard.id, req.keys)
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
        if shard.role is Role.PRIMARY and not req.outbox:
            self.quotas.admit({req.keyspace: 1})  # a page is one operation
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
