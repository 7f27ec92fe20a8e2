"""Thin gRPC adapter of the counters service."""

from __future__ import annotations

from typing import Any

from mt_proto import counters_pb2 as pb
from mt_proto import counters_pb2_grpc

from mt_counters.domain import Counters


class CountersServicer(counters_pb2_grpc.CountersServiceServicer):
    def __init__(self, counters: Counters) -> None:
        self.counters = counters

    async def Increment(self, request: pb.IncrementRequest, context: Any) -> pb.IncrementResponse:
        values = await self.counters.increment(request.deltas, request.idempotency_key)
        return pb.IncrementResponse(values=values)

    async def Get(self, request: pb.GetRequest, context: Any) -> pb.GetResponse:
        return pb.GetResponse(values=await self.counters.get(request.keys, request.fresh))
