"""Settings of the users service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "users"
    grpc_port: int = 50051
