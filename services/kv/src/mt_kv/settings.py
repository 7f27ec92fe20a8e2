"""Settings of the KV processes (shard manager and replicas), from ``MT_*`` variables."""

from __future__ import annotations

from typing import Literal

from mt_core.settings import ServiceSettings

# The KV's processes run on uvloop: its replicas spend their time in socket callbacks (the
# replication link, gRPC) and timers, and 4 alternating put benchmark runs measured 4,317 ->
# 4,838 puts/s, CPU per put 382 -> 335 µs, put p99 35.5 -> 30.4 ms against asyncio's loop.
KV_EVENT_LOOP: Literal["asyncio", "uvloop"] = "uvloop"


class ManagerSettings(ServiceSettings):
    service_name: str = "kv"
    event_loop: Literal["asyncio", "uvloop"] = KV_EVENT_LOOP
    grpc_port: int = 50060
    shards: int = 16
    microshards: int = 1024
    # "id=host:port,..." — the replica set every shard is placed on (3 by default).
    kv_replicas: str = "kv-1=127.0.0.1:50061,kv-2=127.0.0.1:50062,kv-3=127.0.0.1:50063"
    state_path: str = ""  # default: $MT_HOME/data/kv/manager.json
    home: str = ".local"  # MT_HOME
    failover_timeout_ms: int = 1_500  # a primary silent this long is replaced
    lease_ms: int = 1_000
    # "keyspace=ops_s,...": keyspaces' quotas of keys read or written per second (none: no
    # limit); `minithreads kv quota` sets them at run time.
    kv_quotas: str = ""
    hot_moves: bool = True  # move hot μshards off a primary that carries more than its part
    # A shard is split by itself once its primary has held more keys of it than this, or served
    # more keys of it per second (not most of them of one μshard), for 10 s; 0: never.
    kv_split_items: int = 500_000
    kv_split_keys_per_s: float = 4_000.0

    def replica_addrs(self) -> dict[str, str]:
        return _pairs(self.kv_replicas)


def _pairs(spec: str) -> dict[str, str]:
    """``"id=host:port,..."`` as a dict."""
    pairs = (part.split("=", 1) for part in spec.split(",") if part.strip())
    return {rid.strip(): addr.strip() for rid, addr in pairs}


class ReplicaSettings(ServiceSettings):
    service_name: str = "kv"
    event_loop: Literal["asyncio", "uvloop"] = KV_EVENT_LOOP
    # A replica's spans belong to the traces of the calls it serves (and the rounds carrying
    # them); it starts no trace of its own but a failover's. Tracing every write of a caller
    # that does not trace cost ~10% of a replica's CPU under the bench.
    trace_roots: bool = False
    trace_root_names: str = "kv.promote"
    grpc_port: int = 50061
    # The replication link (plain TCP, see kv.proto) listens here; 0 = a port the OS picks.
    # Peers learn the address through the shard manager, so only firewalls need it fixed.
    repl_port: int = 0
    replica_id: str = "kv-1"
    advertise_addr: str = ""  # default: host:grpc_port
    store_url: str = ""  # the items; default: a SQLite file under $MT_HOME/data/<replica_id>/
    # The log; default: log.sqlite beside a SQLite store_url (SQLite has one writer per file,
    # and checkpoints must not hold the write path up), else the same database.
    log_store_url: str = ""
    heartbeat_ms: int = 100  # to the shard manager
    # An idle primary still sends each follower an Append this often (lease, commit point).
    append_interval_ms: int = 50
    # Appends a primary may have unanswered per follower: the link stays busy while one is
    # being made durable, and what is sequenced meanwhile waits to share the next one.
    appends_in_flight: int = 2
    replication_timeout_ms: int = 1_000
    # A write of keyspaces at their quota waits for the next such turn (0: none), so they go
    # out together: one log transaction and one Append for all, not one each (quotas.py).
    over_quota_turn_ms: int = 100
    max_entries_per_append: int = 2_000
    # Applied effects reach the store's items in checkpoints (the log covers what is newer):
    # at least this often, or sooner once this many keys wait (see checkpoint.py).
    checkpoint_interval_ms: int = 1_000
    checkpoint_max_keys: int = 20_000
    log_retention_entries: int = 50_000  # per shard; a follower further behind gets a snapshot
    max_staleness_ms: int = 1_000  # default bound of bounded-staleness reads
    # How long a session write's record of its outcome is kept (exactly-once): repeats first
    # sent longer ago than half of it are refused (the other half absorbs clock differences).
    session_ttl_ms: int = 120_000
    # "id=host:port,...": how this replica reaches its peers where that differs from the
    # addresses they advertise (another network; the chaos suite's per-link proxies).
    peer_addrs: str = ""
    peer_repl_addrs: str = ""  # the same for their replication links
    home: str = ".local"  # MT_HOME
    # The keyspaces this cluster serves (one per use case, as in ZippyDB); others are refused.
    kv_keyspaces: str = (
        "users,handles,sessions,legacy,graph,posts,likes,counters,feed,notifications,"
        "imports,jobs,outbox,idempotency,bench,test"
    )

    def keyspaces(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.kv_keyspaces.split(",") if k.strip())

    def peer_overrides(self) -> dict[str, str]:
        return _pairs(self.peer_addrs)

    def peer_repl_overrides(self) -> dict[str, str]:
        return _pairs(self.peer_repl_addrs)

    def addr(self) -> str:
        return self.advertise_addr or f"{self.host}:{self.grpc_port}"

    def repl_addr(self, bound_port: int) -> str:
        """The replication link's address for peers: the advertised host, the bound port."""
        return f"{self.addr().rsplit(':', 1)[0]}:{bound_port}"

    def store(self) -> str:
        return self.store_url or f"sqlite+aiosqlite:///{self.home}/data/{self.replica_id}/kv.sqlite"
