"""Settings of the posts service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "posts"
    trace_roots: bool = False  # traces start at the edge (the gateway); we continue them
    grpc_port: int = 50053
    max_text_chars: int = 500
    idempotency_ttl_s: int = 24 * 3600
