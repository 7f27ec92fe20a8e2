"""Asking a gRPC server how it is, for the gateway's /healthz and the launcher's gates."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def check(addr: str, service: str = "", timeout_s: float = 1.0) -> str:
    """``serving``, ``not_serving``, ``unknown`` or ``unreachable`` — never raises."""
    async with grpc.aio.insecure_channel(addr) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        try:
            reply = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                return "unknown"
            return "unreachable"
    if reply.status == health_pb2.HealthCheckResponse.SERVING:
        return "serving"
    return "not_serving"
