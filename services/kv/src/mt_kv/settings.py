"""Settings of the KV processes (shard manager and replicas), from ``MT_*`` variables."""

from __future__ import annotations

from mt_core.settings import ServiceSettings


class ManagerSettings(ServiceSettings):
    service_name: str = "kv"
    grpc_port: int = 50060
    shards: int = 16
    microshards: int = 1024
    # "id=host:port,..." — the replica set every shard is placed on (3 by default).
    kv_replicas: str = "kv-1=127.0.0.1:50061,kv-2=127.0.0.1:50062,kv-3=127.0.0.1:50063"
    state_path: str = ""  # default: $MT_HOME/data/kv/manager.json
    home: str = ".local"  # MT_HOME
    failover_timeout_ms: int = 1_500  # a primary silent this long is replaced
    lease_ms: int = 1_000

    def replica_addrs(self) -> dict[str, str]:
        pairs = (part.split("=", 1) for part in self.kv_replicas.split(",") if part.strip())
        return {rid.strip(): addr.strip() for rid, addr in pairs}


class ReplicaSettings(ServiceSettings):
    service_name: str = "kv"
    # A replica's spans belong to the traces of the calls it serves (and the rounds carrying
    # them); it starts no trace of its own but a failover's. Tracing every write of a caller
    # that does not trace cost ~10% of a replica's CPU under the bench.
    trace_roots: bool = False
    trace_root_names: str = "kv.promote"
    grpc_port: int = 50061
    replica_id: str = "kv-1"
    advertise_addr: str = ""  # default: host:grpc_port
    store_url: str = ""  # default: a SQLite file under $MT_HOME/data/<replica_id>/
    heartbeat_ms: int = 100  # to the shard manager
    round_interval_ms: int = 50  # an idle primary still replicates this often (lease, commit)
    group_commit_delay_ms: float = 2.0  # how long a round waits for more writes to join it
    replication_timeout_ms: int = 1_000
    max_entries_per_append: int = 2_000
    log_retention_entries: int = 50_000  # per shard; a follower further behind gets a snapshot
    max_staleness_ms: int = 1_000  # default bound of bounded-staleness reads
    # "id=host:port,...": how this replica reaches its peers where that differs from the
    # addresses they advertise (another network; the chaos suite's per-link proxies).
    peer_addrs: str = ""
    home: str = ".local"  # MT_HOME
    # The keyspaces this cluster serves (one per use case, as in ZippyDB); others are refused.
    kv_keyspaces: str = (
        "users,handles,sessions,legacy,graph,posts,likes,counters,feed,notifications,"
        "imports,jobs,outbox,idempotency,bench,test"
    )

    def keyspaces(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.kv_keyspaces.split(",") if k.strip())

    def peer_overrides(self) -> dict[str, str]:
        pairs = (part.split("=", 1) for part in self.peer_addrs.split(",") if part.strip())
        return {rid.strip(): addr.strip() for rid, addr in pairs}

    def addr(self) -> str:
        return self.advertise_addr or f"{self.host}:{self.grpc_port}"

    def store(self) -> str:
        return self.store_url or f"sqlite+aiosqlite:///{self.home}/data/{self.replica_id}/kv.sqlite"
