"""Live resharding, the shard manager's side: moves μshards between shards while the cluster
serves (after ZippyDB, which absorbed Threads' launch by resharding).

A move runs in steps through the two shards' primaries (the replica side is
``mt_kv.replica.moves``; the protocol is in kv.proto, service Replication):

  precopy  the μshard's keys are copied to the new shard while the old one still takes
           writes (the import's first chunk clears what the new shard held of it)
  fence    the old shard logs that the μshard left; its keys are refused there from then on
  copy     the keys the old shard's log shows changed since the pre-copy, frozen by the fence,
           are copied over (deletions too); all of them if the log no longer goes back that far
  unfence  the new shard drops its own fence for the μshard, if it left there before (only
           now: a copy still running into it would overwrite what clients wrote there)
  flip     the routing table maps the μshard to the new shard (a new table version): clients
           that were refused refresh and go there
  purge    the old shard deletes its copy (the fence stays, for clients with old tables)

Each step is saved before the next starts and is idempotent, so a failed attempt (a
failover, a primary moving, this process restarting) is simply made again: the move always
completes, and the μshard is never writable in two shards. Its keys are unavailable (refused
and retried by the clients) from the fence to the flip: the time to copy what changed
during the pre-copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Protocol

import grpc
from mt_core.errors import FailedPrecondition, InvalidArgument, MinithreadsError, Unavailable
from mt_core.rpc.client import call, channel
from mt_core.rpc.status import error_from_rpc
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc
from opentelemetry import trace

from mt_kv.manager.core import Move, ShardManager

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("mt_kv.manager")

RETRY_S = 0.3  # between attempts of a step that failed
CALL_TIMEOUT_MS = 30_000
KEEP_FINISHED = 32  # finished moves kept for `kv status`
SPLIT_POLL_S = 0.3  # how often a split waiting for its new shard's primary looks again


class ReplicaCalls(Protocol):
    """How the Mover reaches a shard's primary (``addr``): over gRPC (:class:`GrpcCalls`),
    or over the simulation's network. A failure raises a MinithreadsError."""

    async def fence(self, addr: str, req: pb.MicroshardRequest) -> pb.MicroshardResponse: ...

    def export(self, addr: str, req: pb.MicroshardRequest) -> AsyncIterator[pb.SnapshotChunk]: ...

    async def import_(self, addr: str, req: pb.ImportRequest) -> pb.MicroshardResponse: ...

    async def purge(self, addr: str, req: pb.MicroshardRequest) -> pb.MicroshardResponse: ...


class GrpcCalls:
    """The Replication service's μshard calls over gRPC."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _stub(self, addr: str) -> kv_pb2_grpc.ReplicationAsyncStub:
        if addr not in self._channels:
            self._channels[addr] = channel(addr, CALL_TIMEOUT_MS)
        return kv_pb2_grpc.ReplicationStub(self._channels[addr])

    async def fence(self, addr: str, req: pb.MicroshardRequest) -> pb.MicroshardResponse:
        return await call(self._stub(addr).FenceMicroshard(req))

    async def export(self, addr: str, req: pb.MicroshardRequest) -> AsyncIterator[pb.SnapshotChunk]:
        # A stream: the channel's default deadline covers unary calls only.
        try:
            async for chunk in self._stub(addr).ExportMicroshard(
                req, timeout=CALL_TIMEOUT_MS / 1000
            ):
                yield chunk
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None

    async def import_(self, addr: str, req: pb.ImportRequest) -> pb.MicroshardResponse:
        return await call(self._stub(addr).ImportMicroshard(req))

    async def purge(self, addr: str, req: pb.MicroshardRequest) -> pb.MicroshardResponse:
        return await call(self._stub(addr).PurgeMicroshard(req))

    async def close(self) -> None:
        for chan in self._channels.values():
            await chan.close()


class Mover:
    def __init__(self, manager: ShardManager, calls: ReplicaCalls) -> None:
        self.manager = manager
        self.calls = calls
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()

    # ---------------------------------------------------------------- requests

    def request(self, microshard: int, to_shard: int) -> Move:
        """Start moving ``microshard`` to ``to_shard`` (or find that move under way)."""
        manager = self.manager
        if microshard >= len(manager.mapping):
            raise InvalidArgument(
                f"μshard {microshard} out of range (0..{len(manager.mapping) - 1})",
                code="bad_microshard",
            )
        if to_shard >= len(manager.shards):
            raise InvalidArgument(
                f"shard {to_shard} out of range (0..{len(manager.shards) - 1})", code="bad_shard"
            )
        current = manager.moves.get(microshard)
        if current is not None and current.step != "done":
            if current.to_shard != to_shard:
                raise FailedPrecondition(
                    f"μshard {microshard} is already moving to shard {current.to_shard}",
                    code="moving",
                )
            return current
        source = manager.mapping[microshard]
        if source == to_shard:
            return Move(microshard, source, to_shard, step="done")
        move = Move(microshard, source, to_shard)
        manager.moves.pop(microshard, None)
        manager.moves[microshard] = move  # newest last
        self._trim()
        manager.save()
        log.info("μshard move requested", extra={"microshard": microshard, "to": to_shard})
        self._wake.set()
        return move

    def wake(self) -> None:
        """Look for work now (a split requested)."""
        self._wake.set()

    async def wait(self, move: Move, timeout_s: float) -> Move:
        """``move`` once done, or as it stands after ``timeout_s``."""
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: move.step == "done"), timeout_s
                )
        return move

    def _trim(self) -> None:
        finished = [u for u, m in self.manager.moves.items() if m.step == "done"]
        for u in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.manager.moves[u]

    # ---------------------------------------------------------------- the work

    async def run(self) -> None:
        """Advance every unfinished move (they survive restarts in the manager's state)."""
        while True:
            moves = [m for m in self.manager.moves.values() if m.step != "done"]
            if not moves:
                split = self.manager.next_split_move()  # a split's μshards go one by one
                if split is not None:
                    self.request(*split)
                    continue
                self._wake.clear()
                poll_s = SPLIT_POLL_S if self.manager.splits else None  # (for a new primary)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), poll_s)
                continue
            for move in moves:
                try:
                    await self._advance(move)
                    move.error = ""
                except MinithreadsError as err:
                    error = f"{move.step}: {err.code}: {err.message}"
                    if error != move.error:  # not once per attempt
                        log.warning(
                            "μshard move step failed; again shortly", extra={"error": error}
                        )
                    move.error = error
                    await asyncio.sleep(RETRY_S)
                except Exception as err:
                    # Anything else (the state file unwritable, a bug) is retried too: a dead
                    # mover would leave a fenced μshard refused until the manager restarts.
                    move.error = f"{move.step}: {type(err).__name__}: {err}"
                    log.exception("μshard move step crashed; again shortly")
                    await asyncio.sleep(RETRY_S * 10)
                async with self._changed:
                    self._changed.notify_all()

    async def _advance(self, move: Move) -> None:
        with TRACER.start_as_current_span(f"kv.move.{move.step}") as span:
            span.set_attributes(
                {
                    "mt.microshard": move.microshard,
                    "mt.from_shard": move.from_shard,
                    "mt.to_shard": move.to_shard,
                }
            )
            await self._step(move)

    async def _step(self, move: Move) -> None:
        manager, u = self.manager, move.microshard
        if move.step == "precopy":
            move.keys, move.import_seq, move.precopy_seq = await self._copy(
                move, first=True, unfenced=True
            )
            move.step = "fence"
        elif move.step == "fence":
            addr, route = self._primary(move.from_shard)
            await self.calls.fence(addr, self._req(route, u, to_shard=move.to_shard))
            move.fenced_at, move.step = time.time(), "copy"
        elif move.step == "copy":
            await self._copy_rest(move)
            move.step = "unfence"
        elif move.step == "unfence":
            addr, route = self._primary(move.to_shard)
            await self.calls.import_(
                addr,
                pb.ImportRequest(
                    route=route,
                    microshard=u,
                    microshards=len(manager.mapping),
                    unfence=True,
                ),
            )
            move.step = "flip"
        elif move.step == "flip":
            target = manager.shards[move.to_shard]
            target.min_read_seq = max(target.min_read_seq, move.import_seq)
            manager.mapping[u] = move.to_shard
            move.fenced_ms = int((time.time() - move.fenced_at) * 1000)
            move.step = "purge"
            log.info(
                "μshard moved",
                extra={
                    "microshard": u,
                    "to": move.to_shard,
                    "keys": move.keys,
                    "fenced_ms": move.fenced_ms,
                },
            )
        elif move.step == "purge":
            addr, route = self._primary(move.from_shard)
            await self.calls.purge(addr, self._req(route, u))
            move.step = "done"
            manager.split_moved(u, move.to_shard)
            self._trim()
        manager.save()

    async def _copy_rest(self, move: Move) -> None:
        """After the fence: what changed since the pre-copy, or everything again if the
        old shard's log no longer reaches back to it (or there was no pre-copy)."""
        if move.precopy_seq:
            try:
                delta, seq, _ = await self._copy(move, first=False, since_seq=move.precopy_seq)
            except MinithreadsError as err:
                if err.code != "log_trimmed":
                    raise
                move.precopy_seq = 0
            else:
                move.delta_keys, move.keys = delta, move.keys + delta
                move.import_seq = max(move.import_seq, seq)
                return
        move.keys, move.import_seq, _ = await self._copy(move, first=True)
        move.delta_keys = move.keys

    async def _copy(
        self,
        move: Move,
        *,
        first: bool,
        unfenced: bool = False,
        since_seq: int = 0,
    ) -> tuple[int, int, int]:
        """Export from the old shard into the new one: (keys copied, the import's last log
        position in the new shard, the export's position in the old one)."""
        source, from_route = self._primary(move.from_shard)
        target, to_route = self._primary(move.to_shard)
        request = self._req(from_route, move.microshard)
        request.unfenced, request.since_seq = unfenced, since_seq
        keys, seq, position = 0, 0, 0
        async for chunk in self.calls.export(source, request):
            imported = await self.calls.import_(
                target,
                pb.ImportRequest(
                    route=to_route,
                    microshard=move.microshard,
                    microshards=len(self.manager.mapping),
                    first=first,
                    items=chunk.items,
                    version_floor=chunk.max_version,
                ),
            )
            first, keys, seq = False, keys + len(chunk.items), max(seq, imported.seq)
            position = chunk.seq
        return keys, seq, position

    def _req(self, route: pb.Route, microshard: int, to_shard: int = 0) -> pb.MicroshardRequest:
        return pb.MicroshardRequest(
            route=route,
            microshard=microshard,
            microshards=len(self.manager.mapping),
            to_shard=to_shard,
        )

    def _primary(self, shard_id: int) -> tuple[str, pb.Route]:
        """The address of the shard's primary (the replica id, for the simulation's calls, is
        resolved by them from it), and the route naming its epoch."""
        shard = self.manager.shards[shard_id]
        if not shard.primary:
            raise Unavailable(f"shard {shard_id} has no primary now", code="no_primary")
        addr = self.manager.replicas[shard.primary].addr
        return addr, pb.Route(shard=shard_id, epoch=shard.epoch)
