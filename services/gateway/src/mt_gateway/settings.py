"""Settings of the gateway, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "gateway"
    http_port: int = 8080
    health_timeout_ms: int = 1_000
    max_body_bytes: int = 64 * 1024
    # Load shedding: requests in progress beyond this get 503 + Retry-After at once, so the
    # ones admitted still finish in time instead of everyone timing out together.
    max_in_flight: int = 256
    # Rate limits (fixed one-minute windows in Redis). The load test raises the per-IP one:
    # all its simulated users come from one address.
    rate_per_ip_per_min: int = 3_000
    rate_per_user_per_min: int = 1_200
    login_per_handle_per_min: int = 10  # brute force on one account, from anywhere
    login_per_ip_per_min: int = 60  # brute force across accounts, from one address
    idempotency_ttl_s: int = 24 * 3600
    idempotency_wait_ms: int = 5_000  # a retry waits this long for the first attempt's answer
