"""Thin gRPC adapters of a replica: the KV surface for clients, Replication for peers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.replica.core import Replica


class KVServicer(kv_pb2_grpc.KVServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        return await self.replica.get(request)

    async def Write(self, request: pb.WriteRequest, context: Any) -> pb.WriteResponse:
        return await self.replica.write(request)

    async def Scan(self, request: pb.ScanRequest, context: Any) -> pb.ScanResponse:
        return await self.replica.scan(request)


class ReplicationServicer(kv_pb2_grpc.ReplicationServicer):
    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    async def Append(self, request: pb.AppendRequest, context: Any) -> pb.AppendResponse:
        return await self.replica.append(request)

    async def Snapshot(
        self, request: pb.SnapshotRequest, context: Any
    ) -> AsyncIterator[pb.SnapshotChunk]:
        async for chunk in self.replica.snapshot(request):
            yield chunk
