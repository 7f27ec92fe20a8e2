"""Thin gRPC adapter of the shard manager."""

from __future__ import annotations

from typing import Any

from mt_core.errors import InvalidArgument, NotFound
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.manager.core import ShardManager
from mt_kv.manager.mover import Mover

DEFAULT_MOVE_WAIT_MS = 60_000


class ShardManagerServicer(kv_pb2_grpc.ShardManagerServicer):
    def __init__(self, manager: ShardManager, mover: Mover) -> None:
        self.manager = manager
        self.mover = mover

    async def Heartbeat(self, request: pb.HeartbeatRequest, context: Any) -> pb.HeartbeatResponse:
        try:
            return self.manager.heartbeat(request)
        except KeyError:
            raise NotFound(
                f"unknown replica {request.replica_id!r}", code="unknown_replica"
            ) from None

    async def GetRoutingTable(self, request: pb.RoutingRequest, context: Any) -> pb.RoutingTable:
        return self.manager.routing_table()

    async def Status(self, request: pb.StatusRequest, context: Any) -> pb.StatusResponse:
        return self.manager.status()

    async def AddReplica(self, request: pb.AddReplicaRequest, context: Any) -> pb.ReplicaInfo:
        if not request.id or not request.addr:
            raise InvalidArgument("a replica needs an id and an address", code="bad_replica")
        self.manager.add_replica(request.id, request.addr)
        self.manager.save()
        return self.manager.replica_info(request.id)

    async def MoveReplica(self, request: pb.ReplicaMoveRequest, context: Any) -> pb.ReplicaMove:
        try:
            move = self.manager.reconfigs.request(request.shard, request.source, request.target)
        except ValueError as err:
            raise InvalidArgument(str(err), code="bad_replica_move") from None
        self.manager.save()
        return move.info()

    async def DrainReplica(self, request: pb.DrainRequest, context: Any) -> pb.ReplicaInfo:
        try:
            self.manager.drain(request.id)
        except ValueError as err:
            raise InvalidArgument(str(err), code="bad_drain") from None
        return self.manager.replica_info(request.id)

    async def SetQuota(self, request: pb.QuotaRequest, context: Any) -> pb.QuotaUse:
        self.manager.quotas.set(request.keyspace, request.ops_s, request.bytes)
        self.manager.save()
        live = [r for r in self.manager.replicas if self.manager.alive(r)]
        return self.manager.quotas.use_of(request.keyspace, live)

    async def SplitShard(self, request: pb.SplitRequest, context: Any) -> pb.Split:
        try:
            split = self.manager.split(request.shard)
        except ValueError as err:
            raise InvalidArgument(str(err), code="bad_split") from None
        self.mover.wake()
        return split

    async def MoveMicroshard(self, request: pb.MoveRequest, context: Any) -> pb.MicroshardMove:
        move = self.mover.request(request.microshard, request.to_shard)
        waited = await self.mover.wait(move, (request.wait_ms or DEFAULT_MOVE_WAIT_MS) / 1000)
        return waited.info()
