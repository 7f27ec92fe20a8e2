"""Settings of the kv service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "kv"
    grpc_port: int = 50060
