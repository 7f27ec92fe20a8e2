"""Thin gRPC adapter of the shard manager."""

from __future__ import annotations

from typing import Any

from mt_core.errors import NotFound
from mt_proto import kv_pb2 as pb
from mt_proto import kv_pb2_grpc

from mt_kv.manager.core import ShardManager


class ShardManagerServicer(kv_pb2_grpc.ShardManagerServicer):
    def __init__(self, manager: ShardManager) -> None:
        self.manager = manager

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
