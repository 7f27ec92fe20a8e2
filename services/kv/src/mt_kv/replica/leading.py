"""The primary's I/O: group commit (one local store transaction and one Append per follower
for what was sequenced in an event-loop turn), the replication links and their answers, the
commit point, applying what committed and answering its writers; the ticker and the TTL
sweeper."""

from __future__ import annotations

import asyncio
import logging
import time

import msgpack
from mt_proto import kv_pb2 as pb
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanContext, SpanKind, StatusCode

from mt_kv.data import decode_effects
from mt_kv.replica.base import ReplicaBase
from mt_kv.replica.link import PeerLink, Sent
from mt_kv.replica.shard import Shard
from mt_kv.replica.tracing import COMMIT_SECONDS, _Note, _open_span, _Part, _traced_in
from mt_kv.rules.breaks import broken
from mt_kv.rules.log import EPOCH, PAYLOAD, SEQ, LogRec
from mt_kv.rules.progress import Progress
from mt_kv.rules.shard import Role
from mt_kv.storage.store import Batch, EpochRow, LogRow

log = logging.getLogger(__name__)

S = pb.ShardAppendResult


class Leading(ReplicaBase):
    """The primary's side of the replica (a part of :class:`mt_kv.replica.core.Replica`); it is
    its links' owner (``link.LinkOwner``)."""

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
            held = self.shards.get(shard_id)
            if held is None:
                continue  # dropped meanwhile
            held.persisted(seq, epoch)
            if held.role is Role.PRIMARY:
                self._advance_commit(held)
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
            if progress is None or shard.role is not Role.PRIMARY or part.epoch < shard.led_from:
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
        if shard.handover_to:
            self._hand_over_if_ready(shard)

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

    # ------------------------------------------------------------------ TTL

    async def _sweeper(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = self.wall_ms()
            for shard in [s for s in self.shards.values() if s.sequencing()]:
                expired = shard.data.expired(now, 500)
                if expired:
                    self._sequence(shard, [(k, None) for k, _ in expired])
