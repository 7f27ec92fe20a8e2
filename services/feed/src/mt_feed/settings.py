"""Settings of the feed service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "feed"
    grpc_port: int = 50055
    timeline_concurrency: int = 32  # author timelines read at once when assembling a page
