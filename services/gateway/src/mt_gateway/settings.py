"""Settings of the gateway, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "gateway"
    http_port: int = 8080
    health_timeout_ms: int = 1_000
