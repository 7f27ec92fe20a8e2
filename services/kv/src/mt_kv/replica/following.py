"""The follower's I/O: a primary's Appends (checked and logged, made durable in one store
transaction, applied, answered) and snapshots, pulled from a primary or served to a
follower."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import msgpack
from mt_kv_contract.errors import NotPrimary
from mt_proto import kv_pb2 as pb
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from mt_kv.data import Entry, KeyT, key_of
from mt_kv.replica.base import ReplicaBase
from mt_kv.replica.requests import to_item
from mt_kv.replica.shard import Shard
from mt_kv.replica.tracing import TRACER
from mt_kv.rules.breaks import broken
from mt_kv.rules.follow import Admission
from mt_kv.rules.log import LogRec
from mt_kv.rules.shard import Role
from mt_kv.storage.store import Batch, EpochRow, LogRow, Position

log = logging.getLogger(__name__)

S = pb.ShardAppendResult
SNAPSHOT_CHUNK = 1_000


class Following(ReplicaBase):
    """The follower's side of the replica (a part of :class:`mt_kv.replica.core.Replica`)."""

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
            for released in req.released:  # (before its shards: it sends none after it)
                if (held := self.shards.get(released.shard)) is not None:
                    held.released(req.primary, released.epoch, now)
                    if released.successor_epoch:
                        self._take_over(held, req.primary, released)
            for sa in req.shards:
                if sa.shard in self._dropped:  # (sent before the primary knew we left)
                    results.append(S(shard=sa.shard, status=S.STALE_EPOCH, epoch=sa.epoch))
                    continue
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
            if shard_id in self.shards:  # (unless dropped meanwhile)
                self.shards[shard_id].persisted(seq, epoch)
        acked = self._clock()
        for shard, upto in applies:
            shard.commit_seq = max(shard.commit_seq, upto)
            self._apply_committed(shard)
        answers: list[pb.AppendResponse] = []
        for req, results, span in handled:
            for sa, result in zip(req.shards, results, strict=True):
                if result.status == S.OK and sa.shard in self.shards:
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
