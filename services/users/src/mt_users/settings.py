"""Settings of the users service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "users"
    grpc_port: int = 50051
    # scrypt cost: N = 2**scrypt_log2_n (memory = 128 * r * N bytes: 32 MiB at 15). Stored with
    # each hash, so changing it only affects new passwords. Load tests may lower it.
    scrypt_log2_n: int = 15
    session_ttl_s: int = 30 * 24 * 3600
    legacy_seed: int = 2023
    legacy_size: int = 1_000_000
