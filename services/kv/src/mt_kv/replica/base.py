"""What the parts of the replica share: its state, and the methods one part calls in another
(declared here, defined where named), so each part type-checks on its own. The parts are
mixins of :class:`mt_kv.replica.core.Replica`, which sets the state up (``__init__``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import grpc
from mt_proto import kv_pb2 as pb

from mt_kv.data import Change
from mt_kv.replica.checkpoint import Checkpointer
from mt_kv.replica.link import PeerLink
from mt_kv.replica.load import Load
from mt_kv.replica.quotas import Quotas
from mt_kv.replica.shard import Shard
from mt_kv.rules.shard import Role
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Batch, Durable

__all__ = ["ReplicaBase", "SnapshotSource", "now_ms"]


def now_ms() -> int:
    return int(time.time() * 1000)


SnapshotSource = Callable[[str, pb.SnapshotRequest], AsyncIterator[pb.SnapshotChunk]]


class ReplicaBase:
    """The replica's state (see ``Replica.__init__``) and its parts' calls across parts."""

    settings: ReplicaSettings
    _clock: Callable[[], float]
    wall_ms: Callable[[], int]
    _snapshot_from: SnapshotSource
    id: str
    store: Durable
    shards: dict[int, Shard]
    addrs: dict[str, str]
    repl_addrs: dict[str, str]
    lease_s: float
    _links: dict[str, PeerLink]
    _flush_scheduled: bool
    _over_quota_turn: asyncio.Future[None] | None
    _persisting: bool
    _heartbeat_due: bool
    _answered: asyncio.Event
    _dirty_metas: set[int]
    _dropped: set[int]
    _persist_task: asyncio.Task[None] | None
    _checkpointer: Checkpointer
    _channels: dict[str, grpc.aio.Channel]
    _tasks: list[asyncio.Task[None]]
    _keyspaces: frozenset[str]
    quotas: Quotas
    served: Load
    _peer_overrides: dict[str, str]
    _peer_repl_overrides: dict[str, str]
    report_soon: asyncio.Event

    # Defined in core.py (Replica).

    def shard(self, shard_id: int) -> Shard:
        raise NotImplementedError

    def _become(
        self,
        shard: Shard,
        role: Role,
        epoch: int,
        primary: str,
        why: str,
        *,
        continues: bool = False,
        successor: pb.Released | None = None,
    ) -> None:
        raise NotImplementedError

    # Defined in members.py (Members).

    def _hand_over_if_ready(self, shard: Shard) -> None:
        raise NotImplementedError

    def _take_over(self, shard: Shard, sender: str, handover: pb.Released) -> None:
        raise NotImplementedError

    def _fail_waiters(self, shard: Shard, why: str) -> None:
        raise NotImplementedError

    # Defined in requests.py (Requests).

    def _sequence(self, shard: Shard, changes: list[Change]) -> int:
        raise NotImplementedError

    # Defined in leading.py (Leading).

    def _schedule_flush(self) -> None:
        raise NotImplementedError

    def _take_metadata(self, batch: Batch) -> None:
        raise NotImplementedError

    def _apply_committed(self, shard: Shard) -> None:
        raise NotImplementedError
