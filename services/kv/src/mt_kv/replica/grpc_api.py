"""Thin gRPC adapters of a replica: the KV surface for clients, snapshots for peers (Appends
come over the replication link, ``link.py``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from mt_core.errors import MinithreadsError, RateLimited
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.replica.core import Replica
from mt_kv.replica.moves import Moves


class KVServicer(kv_pb2_grpc.KVServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        return await self.replica.get(request)

    async def Write(self, request: pb.WriteRequest, context: Any) -> pb.WriteResponse:
        return await self.replica.write(request)

    async def Scan(self, request: pb.ScanRequest, context: Any) -> pb.ScanResponse:
        return await self.replica.scan(request)

    async def BatchGet(self, request: pb.BatchGetRequest, context: Any) -> pb.BatchGetResponse:
        if request.held:
            self.replica.quotas.held_by_client(request.held)
        results = await asyncio.gather(*(self._get(g) for g in request.gets))
        return pb.BatchGetResponse(results=results)

    async def BatchWrite(
        self, request: pb.BatchWriteRequest, context: Any
    ) -> pb.BatchWriteResponse:
        # Every write is sequenced first (in order), then their commits are awaited.
        if request.held:
            self.replica.quotas.held_by_client(request.held)
        await self.replica.over_quota(request.writes)
        started: list[tuple[pb.WriteResult, asyncio.Future[None] | None]] = []
        for write in request.writes:
            try:
                response, committed = self.replica.begin_write(write)
            except MinithreadsError as err:
                started.append((pb.WriteResult(error=_error(err)), None))
            else:
                started.append((pb.WriteResult(ok=response), committed))
        for result, committed in started:
            if committed is None:
                continue
            try:
                await committed
            except MinithreadsError as err:
                result.Clear()
                result.error.CopyFrom(_error(err))
        return pb.BatchWriteResponse(results=[result for result, _ in started])

    async def _get(self, request: pb.GetRequest) -> pb.GetResult:
        try:
            return pb.GetResult(ok=await self.replica.get(request))
        except MinithreadsError as err:
            return pb.GetResult(error=_error(err))


class ReplicationServicer(kv_pb2_grpc.ReplicationServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.moves = Moves(replica)

    async def Snapshot(
        self, request: pb.SnapshotRequest, context: Any
    ) -> AsyncIterator[pb.SnapshotChunk]:
        async for chunk in self.replica.snapshot(request):
            yield chunk

    async def FenceMicroshard(
        self, request: pb.MicroshardRequest, context: Any
    ) -> pb.MicroshardResponse:
        return await self.moves.fence(request)

    async def ExportMicroshard(
        self, request: pb.MicroshardRequest, context: Any
    ) -> AsyncIterator[pb.SnapshotChunk]:
        async for chunk in self.moves.export(request):
            yield chunk

    async def ImportMicroshard(
        self, request: pb.ImportRequest, context: Any
    ) -> pb.MicroshardResponse:
        return await self.moves.import_(request)

    async def PurgeMicroshard(
        self, request: pb.MicroshardRequest, context: Any
    ) -> pb.MicroshardResponse:
        return await self.moves.purge(request)


def _error(err: MinithreadsError) -> pb.Error:
    error = pb.Error(kind=type(err).__name__, code=err.code, message=err.message)
    if isinstance(err, RateLimited):
        error.retry_after_ms = round(err.retry_after_s * 1000)
    return error
