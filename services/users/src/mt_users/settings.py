"""Settings of the users service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "users"
    grpc_port: int = 50051
    # scrypt cost: N = 2**scrypt_log2_n (memory = 128 * r * N bytes: 32 MiB at 15). Stored with
    # each hash, so changing it only affects new passwords. Load tests may lower it.
    scrypt_log2_n: int = 15
    # Threads hashing passwords: a few more than the cores, so that under a surge signups keep
    # their share of the CPU against the other processes of a shared box.
    hash_workers: int = 4
    # Of a request's deadline, what a hash must leave for the writes after it.
    hash_reserve_ms: int = 1_500
    session_ttl_s: int = 30 * 24 * 3600
    legacy_seed: int = 2023
    legacy_size: int = 1_000_000
