"""Settings of the graph service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "graph"
    grpc_port: int = 50052
