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

The driver is one class, :class:`Replica`, in parts: this module (construction, lifetime,
assignments and role changes, progress), ``members.py`` (membership: epochs continued in
place, copies dropped, leases released), ``requests.py`` (the client API: writes, reads),
``leading.py`` (the primary's I/O: group commit, the links, applying), ``following.py`` (the
follower's I/O: Appends, snapshots), ``base.py`` (the state they share), ``tracing.py`` (spans
and metrics). The rules (``mt_kv.rules``, via :class:`Shard`) decide; these parts do the I/O.

I/O order
---------

A client write (``Requests.begin_write``; nothing is awaited until the last step):

1. Check: ``_primary_shard`` refuses unless we lead the shard at the route's epoch; the write
   must have 1..``MAX_BATCH`` mutations and conditions.
2. Validate and check: each condition (``_check``: key, moved μshard, the condition against
   ``shard.view`` — committed data overlaid with the writes sequenced, ``pending``); then
   ``_effects``: each mutation's key, value and effect (an increment becomes its result).
3. Sequence (``_sequence``; every change a primary makes comes through here, the TTL sweeper's
   and live resharding's too): ``shard.propose`` appends the next entry to the in-memory log
   (and ``unpersisted``), its changes go to ``pending`` (``_add_pending``), and
   ``_schedule_flush`` asks for one flush at the end of this event-loop turn.
4. The response is ready; unless fast-ack, the writer awaits a ``Waiter`` on its seq.
5. Group-commit flush (``Leading._flush``, once per turn): first ``_persist`` — unless one is
   being written, ONE local store transaction with every led shard's ``unpersisted`` entries
   plus ``_take_metadata`` (dirty epochs/primaries, log trims); then ``_pump`` per follower
   link — if connected with room (``appends_in_flight``), ONE Append carrying every led
   shard's unsent entries, sent without waiting for earlier answers.
6. Answers: the local transaction done (``_persisted``: ``shard.persisted``, then
   ``_advance_commit``, then ``_persist`` again for what queued meanwhile; a store failure
   steps down from every shard via ``_become``), or a follower's answer (``on_answer``: per
   shard ``_on_result`` — progress, lease; a later epoch seen makes us ``_become`` follower —
   then ``_advance_commit``; then ``_signal_answered`` wakes strong reads, ``_schedule_flush``
   uses the room freed). A lost link (``on_lost``) ends its spans and has each shard probe.
7. Commit rule (``shard.advance_commit``): a majority durable (our own log counted once
   persisted) and an entry of the current epoch at or past it.
8. Apply (``_apply_committed``): committed entries in seq order into the data, clearing
   ``pending`` and the traced contexts.
9. Answer writers: the waiters up to ``applied_seq``, in seq order (``kv_commit_seconds``).

A follower's append batch (``Following.append_batch``: the requests that arrived down one
primary's link while the previous batch was being made durable, in order):

1. Check and log each request's shards (``_follow``): admission (stale epoch, lease wait;
   adopting a primary goes through ``_become``), snapshot needed (``_pull_snapshot`` runs as a
   task), ``shard.fit`` (mismatch, truncation) — the entries go into that request's batch.
2. ONE store transaction: first the entries we sequenced as primary and never stored, then
   every request's batch, last ``_take_metadata`` (epochs as they are after these requests).
3. Persisted: ``shard.persisted`` for each shard followed.
4. Apply committed: each shard's commit point up to what it holds, ``_apply_committed``.
5. Answer: per request, in order; each OK shard is ``acknowledged`` (the lease counted from
   after the sync) and fresh if applied to the primary's commit point.

A tick (``Leading._ticker``, every ``append_interval_ms``): links with overdue answers are
dropped (``on_lost``); a checkpoint starts if due; ``_persist(everything=True)`` writes
metadata and trims even without new entries; the next flush is a heartbeat (an Append to
every follower for every shard led: the lease, the commit point). The TTL sweeper (every
0.5 s) sequences deletes of expired keys like any write.

A role change (``Replica._become``, the single path for every change of a shard's role, epoch
or primary — from ``assign``/``_promote``, ``_follow``, ``_on_result`` and ``_persisted``):
``shard.reset`` (the rules); stepping down drops ``pending`` and fails the waiters
(``_fail_waiters``: outcome unknown); a new epoch or primary marks the metadata dirty
(``_meta``: the next store transaction, either side's, writes it); becoming primary
(``_lead``): a link per follower, ``pending`` rebuilt from the unapplied tail, and an entry of
the new epoch sequenced (step 3 of a write) so the inherited tail may commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
from mt_core.rpc.client import untraced_channel
from mt_kv_contract.errors import Indeterminate
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.data import decode_effects
from mt_kv.replica.base import SnapshotSource, now_ms
from mt_kv.replica.checkpoint import Checkpointer
from mt_kv.replica.following import Following
from mt_kv.replica.leading import Leading
from mt_kv.replica.link import PeerLink
from mt_kv.replica.load import Load
from mt_kv.replica.members import Members
from mt_kv.replica.quotas import Quotas
from mt_kv.replica.requests import Requests, to_item
from mt_kv.replica.shard import Shard
from mt_kv.replica.tracing import REPLICATION_LAG, TRACER
from mt_kv.rules.breaks import broken
from mt_kv.rules.log import PAYLOAD
from mt_kv.rules.shard import Role
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Durable

__all__ = ["Replica", "SnapshotSource", "now_ms", "to_item"]

log = logging.getLogger(__name__)


class Replica(Requests, Leading, Following, Members):
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
        self._over_quota_turn: asyncio.Future[None] | None = None  # see Requests.over_quota
        self._persisting = False  # a local persist of ours is being written
        self._heartbeat_due = False  # the next flush asks every follower (lease in doubt)
        self._answered: asyncio.Event = asyncio.Event()  # replaced after each Append answer
        self._dirty_metas: set[int] = set()  # shards whose metadata the store lacks
        self._dropped: set[int] = set()  # shards we held and are no longer a member of
        self._persist_task: asyncio.Task[None] | None = None
        rng = rng or random.Random()
        self._checkpointer = Checkpointer(settings, store, self.shards, clock, rng)
        self.incarnation = rng.getrandbits(63) | 1  # this process's, in every heartbeat
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._keyspaces = settings.keyspaces()
        self.quotas = Quotas(clock)  # its shares of the keyspaces' quotas, and its load
        self.served = Load(clock)  # per shard and μshard led, for placement by load
        self._peer_overrides = settings.peer_overrides()
        self._peer_repl_overrides = settings.peer_repl_overrides()
        self.report_soon = asyncio.Event()  # a handover done: heartbeat now, not in 100 ms

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

    def stored_bytes(self) -> dict[str, int]:
        """Bytes stored per keyspace in the shards this replica leads (for bytes quotas: each
        shard is counted by its primary alone)."""
        stored: dict[str, int] = {}
        for shard in self.shards.values():
            if shard.role is Role.PRIMARY:
                for keyspace, n in shard.data.bytes.items():
                    stored[keyspace] = stored.get(keyspace, 0) + n
        return stored

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
            applied_epoch=s.applied_epoch,
            last_seq=last_seq,
            last_epoch=last_epoch,
            primary=s.role is Role.PRIMARY,
            serving=(s.role is Role.PRIMARY and now >= s.serving_after)
            or (s.role is Role.FOLLOWER and fresh),
            items=len(s.data),
        )

    def _export_lag(self) -> None:
        """Per shard we lead: how many entries each follower has yet to make durable."""
        for s in self.shards.values():
            if s.role is Role.PRIMARY:
                for follower, progress in s.progress.items():
                    lag = s.last_seq - progress.match_seq
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
            if info.id not in self.shards and self.id not in (*info.replicas, *info.learners):
                continue  # a shard we hold no copy of
            self.addrs.update(info.addrs)
            shard = self.shard(info.id)
            if info.epoch < shard.epoch:
                continue
            if info.handover_from:  # (shown only to the replica handing the shard over)
                if info.handover_from == self.id:
                    self._handing_over(shard, info)
                continue
            if self.id not in (*info.replicas, *info.learners):
                self._drop(shard)  # our copy moved elsewhere
                continue
            self._dropped.discard(info.id)
            shard.set_members(info.replicas, info.learners)  # (voters change with the epoch)
            if shard.role is Role.PRIMARY and info.epoch == shard.epoch:
                self._open_links(shard)  # a learner added
            if self._continues(shard, info):
                self._become(shard, Role.PRIMARY, info.epoch, self.id, "in place", continues=True)
                continue
            if info.epoch > shard.epoch:  # fenced: no primary until the manager names one
                self._become(shard, Role.FOLLOWER, info.epoch, "", "a new epoch was assigned")
            if not info.primary:
                continue
            if info.primary == self.id:
                # (An epoch continued in place names us only to go on leading: if we are not
                # leading — restarted, stepped down — our log may lack what the others
                # committed; the manager sees us not take it and holds an election.)
                if (
                    shard.role is not Role.PRIMARY
                    and shard.primary == ""
                    and shard.may_lead(info.epoch)
                    and not info.continues_epoch
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

    def _become(
        self,
        shard: Shard,
        role: Role,
        epoch: int,
        primary: str,
        why: str,
        *,
        continues: bool = False,
        successor: pb.Released | None = None,
    ) -> None:
        """EVERY change of a shard's role, epoch or primary (:meth:`ShardCore.reset`), and what
        it asks of us: writers waiting on entries we sequenced learn their outcome is unknown;
        the other members learn we stepped down (and ``successor``, after a handover, that it
        leads now); a new primary starts its epoch with an entry of its own, and so does one
        continuing into the next epoch in place."""
        led = shard.epoch
        reset = shard.reset(role, epoch, primary, self._clock(), self.lease_s, continues=continues)
        if reset.stepped_down:
            log.info("stepping down", extra={"shard": shard.id, "epoch": epoch, "why": why})
            shard.pending = {}
            shard.changes = {}  # entries we sequenced may yet be replaced: decode what commits
            self._fail_waiters(shard, why)
            self._release(shard, led, successor)
        if reset.moved:
            self._meta(shard)
        if continues:
            self._open_links(shard)
            self._start_epoch(shard)
        elif role is Role.PRIMARY:
            self._lead(shard)

    def _lead(self, shard: Shard) -> None:
        self._open_links(shard)
        shard.pending = {}
        for seq in range(shard.applied_seq + 1, shard.last_seq + 1):
            entry = shard.entry(seq)
            assert entry is not None
            self._add_pending(shard, seq, decode_effects(entry[PAYLOAD]))
        self._start_epoch(shard)

    def _open_links(self, shard: Shard) -> None:
        for follower in shard.progress:
            self._link(follower)

    def _start_epoch(self, shard: Shard) -> None:
        # An entry of the new epoch lets the inherited tail commit (Raft §5.4.2); strong reads
        # wait until it is applied, so they see every write the previous primaries committed.
        # Applied, it also shows the manager that the epoch's voters are established.
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
