"""Settings of the users service, from ``MT_*`` environment variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "users"
    trace_roots: bool = False  # traces start at the edge (the gateway); we continue them
    grpc_port: int = 50051
    # Argon2id's cost (OWASP's first recommendation). Stored with each hash, so changing it
    # only affects new passwords.
    argon2_time_cost: int = 2
    argon2_memory_kib: int = 19_456
    argon2_parallelism: int = 1
    # Threads hashing passwords: a few more than the cores, so that under a surge signups keep
    # their share of the CPU against the other processes of a shared box.
    hash_workers: int = 4
    # Of a request's deadline, what a hash must leave for the writes after it.
    hash_reserve_ms: int = 1_500
    session_ttl_s: int = 30 * 24 * 3600
    handle_cache_size: int = 100_000  # handle -> user id, remembered (they never change)
    # Where the legacy identity provider's keys are (secrets/legacy-idp.pub under it: the users
    # service reads only the public key), and the audience its assertions must name.
    home: str = ".local"
    legacy_audience: str = "minithreads"
    legacy_seed: int = 2023
    legacy_size: int = 1_000_000
