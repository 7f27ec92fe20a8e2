"""Settings of the counters service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "counters"
    grpc_port: int = 50054
    cache_ttl_ms: int = 5_000  # how stale a non-fresh read may be, at most
    lease_ms: int = 2_000  # how long one reader may hold the right to fill a missing entry
    lease_wait_ms: int = 20  # how often a reader without the lease looks again
    idempotency_ttl_s: int = 24 * 3600
    max_combined: int = 400  # deltas folded into one KV write for a hot key
