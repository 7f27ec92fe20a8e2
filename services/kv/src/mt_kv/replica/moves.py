"""A replica's side of live resharding: what the primaries of a μshard's old and new shards do
when the shard manager moves it (the steps are in kv.proto, service Replication).

Everything here goes through the shard's log like any write, so it is replicated, survives a
failover (a new primary has the committed entries) and is idempotent: the manager repeats a
step that was interrupted. The invariant that makes the move safe: a μshard's keys are
written in exactly one shard at any time. The old shard refuses them from its fence entry on
(``Replica._refuse_moved``), the new one is only routed to once the copy is committed there,
and the copy is taken after the fence committed, so nothing written before it is missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_kv_contract.keys import microshard, validate_value
from mt_proto import kv_pb2 as pb

from mt_kv.data import (
    META_KEYSPACE,
    VALUE,
    VERSION_FLOOR,
    Change,
    Entry,
    KeyT,
    ShardData,
    decode_effects,
    moved_key,
    moved_value,
)
from mt_kv.replica.core import Replica, to_item
from mt_kv.replica.shard import Shard
from mt_kv.rules.log import PAYLOAD

CHUNK = 1_000  # keys per exported chunk, per log entry of a purge
CHUNK_BYTES = 4 << 20  # an exported chunk stops growing past this (values go up to 1 MiB)
# Partitions hashed per event-loop turn while finding a μshard's keys: a shard of millions of
# keys would otherwise stall the replica (heartbeats, leases, writes) for seconds.
SCAN_SLICE = 2_000


async def microshard_items(
    data: ShardData, microshard_: int, microshards: int, now: int
) -> list[tuple[KeyT, Entry]]:
    """The live entries of one μshard (``now`` 0: expired ones too), found by hashing every
    partition of the shard, yielding to the event loop between slices. Not a snapshot of one
    instant: callers either hold the μshard still (a fence) or take their position
    before and copy what changed after it (the pre-copy and its delta)."""
    out: list[tuple[KeyT, Entry]] = []
    partitions = data.partitions()
    for start in range(0, len(partitions), SCAN_SLICE):
        for partition in partitions[start : start + SCAN_SLICE]:
            if microshard(partition[0], partition[1], microshards) == microshard_:
                out.extend(data.partition_items(partition, now))
        await asyncio.sleep(0)
    return out


MAX_IMPORT = 5_000  # items per ImportMicroshard call


class Moves:
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def _shard(self, req: pb.MicroshardRequest | pb.ImportRequest) -> Shard:
        if not req.microshards or req.microshard >= req.microshards:
            raise InvalidArgument(
                f"μshard {req.microshard} is not one of {req.microshards}", code="bad_microshard"
            )
        shard = self.replica._primary_shard(req.route)
        known = shard.data.microshards or shard.move_hint
        if known and known != req.microshards:
            raise InvalidArgument(
                f"shard {shard.id} hashes keys into {known} μshards, not {req.microshards}",
                code="bad_microshard",
            )
        return shard

    async def fence(self, req: pb.MicroshardRequest) -> pb.MicroshardResponse:
        """Log that the μshard left; answered once that is committed (repeating it is
        harmless: the fence is written again)."""
        shard = self._shard(req)
        fence: Entry = (moved_value(req.to_shard, req.microshards), 0, 0)
        seq = await self.replica.commit(shard, [(moved_key(req.microshard), fence)])
        return pb.MicroshardResponse(seq=seq)

    async def _fenced(self, req: pb.MicroshardRequest) -> Shard:
        shard = self._shard(req)
        # A strong read: the lease says no other primary exists, and everything committed
        # before (the fence) has been applied here.
        await self.replica._ensure_lease(shard)
        if req.microshard not in shard.data.moved:
            raise FailedPrecondition(
                f"μshard {req.microshard} is not fenced in shard {shard.id}", code="not_fenced"
            )
        return shard

    async def export(self, req: pb.MicroshardRequest) -> AsyncIterator[pb.SnapshotChunk]:
        """The μshard's keys: all of them as they are (the pre-copy, ``unfenced``), or once
        fenced, all of them or those changed after ``since_seq`` (the delta)."""
        if req.unfenced:
            shard = self._shard(req)
            await self.replica._ensure_lease(shard)  # the state as of what was committed
        else:
            shard = await self._fenced(req)
        # The position first: the pre-copy's keys are read as of it or later, and its delta
        # takes every key changed after it.
        seq, seq_epoch = shard.applied_seq, shard.applied_epoch
        top = shard.last_seq + shard.version_floor()  # above every version given here
        pairs: list[tuple[KeyT, Entry | None]]
        if req.since_seq and not req.unfenced:
            pairs = self._changed_since(shard, req)
        else:
            pairs = list(
                await microshard_items(
                    shard.data, req.microshard, req.microshards, self.replica.wall_ms()
                )
            )
        chunk = pb.SnapshotChunk(seq=seq, seq_epoch=seq_epoch, max_version=top)
        size = 0
        for k, e in pairs:
            chunk.items.append(to_item(k, e))  # found=false: absent now
            size += len(k[1]) + len(k[2]) + (len(e[VALUE]) if e is not None else 0)
            if len(chunk.items) == CHUNK or size >= CHUNK_BYTES:
                yield chunk
                chunk = pb.SnapshotChunk(seq=seq, seq_epoch=seq_epoch, max_version=top)
                size = 0
        if chunk.items or not pairs:
            yield chunk  # at least one: it carries the position, and an import's first chunk

    def _changed_since(
        self, shard: Shard, req: pb.MicroshardRequest
    ) -> list[tuple[KeyT, Entry | None]]:
        """The μshard's keys that log entries after ``since_seq`` touched, as they are now
        (None: absent now, deleted or expired)."""
        if req.since_seq < shard.tail_start - 1:
            raise FailedPrecondition(
                f"shard {shard.id}'s log starts after {req.since_seq}", code="log_trimmed"
            )
        ours: dict[tuple[str, bytes], bool] = {}  # partition -> in the μshard
        touched: dict[KeyT, None] = {}
        for seq in range(req.since_seq + 1, shard.applied_seq + 1):
            entry = shard.entry(seq)
            assert entry is not None, (shard.id, seq)
            for key, _ in decode_effects(entry[PAYLOAD]):
                partition = key[:2]
                mine = ours.get(partition)
                if mine is None:
                    mine = ours[partition] = key[0] != META_KEYSPACE and (
                        microshard(key[0], key[1], req.microshards) == req.microshard
                    )
                if mine:
                    touched[key] = None
        now = self.replica.wall_ms()
        return [(key, shard.data.get(key, now)) for key in touched]

    async def import_(self, req: pb.ImportRequest) -> pb.MicroshardResponse:
        """Write a chunk of the μshard's keys with their versions and TTLs (or deletions), as
        one entry; ``first`` also drops what this shard held of the μshard (an earlier,
        interrupted copy; keys from when it was here before), ``unfence`` its fence here, if
        it left before (only after the old shard's fence: see ImportRequest)."""
        shard = self._shard(req)
        if len(req.items) > MAX_IMPORT:
            raise InvalidArgument(f"at most {MAX_IMPORT} items per import", code="batch_too_large")
        changes: dict[KeyT, Entry | None] = {}
        if req.first:
            held = await microshard_items(shard.data, req.microshard, req.microshards, 0)
            changes.update((key, None) for key, _ in held)
        if req.unfence and shard.view(moved_key(req.microshard), 0) is not None:
            changes[moved_key(req.microshard)] = None
        top = req.version_floor
        for item in req.items:
            key = self._checked_key(item.key, req)
            if not item.found:
                changes[key] = None  # gone since the pre-copy
                continue
            validate_value(item.value)
            changes[key] = (item.value, item.version, item.expires_at_ms)
            top = max(top, item.version)
        if top > shard.version_floor():
            changes[VERSION_FLOOR] = (str(top).encode(), 0, 0)
        if not changes:
            return pb.MicroshardResponse()
        listed: list[Change] = list(changes.items())
        seq = await self.replica.commit(shard, listed)
        return pb.MicroshardResponse(seq=seq, keys=len(req.items))

    def _checked_key(self, key: pb.Key, req: pb.ImportRequest) -> KeyT:
        self.replica._validate_key(key)
        if microshard(key.keyspace, key.partition, req.microshards) != req.microshard:
            raise InvalidArgument(
                f"a key of another μshard in the import of {req.microshard}", code="bad_item"
            )
        return (key.keyspace, key.partition, key.key)

    async def purge(self, req: pb.MicroshardRequest) -> pb.MicroshardResponse:
        """Delete this shard's copy of a μshard that moved away (its fence stays)."""
        shard = await self._fenced(req)
        held = await microshard_items(shard.data, req.microshard, req.microshards, 0)
        seq = 0
        for start in range(0, len(held), CHUNK):
            chunk: list[Change] = [(key, None) for key, _ in held[start : start + CHUNK]]
            seq = await self.replica.commit(shard, chunk)
        return pb.MicroshardResponse(seq=seq, keys=len(held))
