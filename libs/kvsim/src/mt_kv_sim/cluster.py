"""The simulated cluster: the real shard manager and three real replicas (driver and rules), each
in a process of the simulation, wired as their apps wire them — a replica loads its store,
serves its replication link, heartbeats the manager and follows the assignment it answers
with. The cluster also watches what must never happen (see :class:`Watch`)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mt_core.errors import Unavailable
from mt_kv.manager.core import Move, ShardManager
from mt_kv.manager.mover import Mover
from mt_kv.manager.reconfig import ReplicaMove
from mt_kv.replica import link as replication_link
from mt_kv.replica.core import Replica
from mt_kv.replica.moves import Moves
from mt_kv.replica.shard import Shard
from mt_kv.rules.log import EPOCH, PAYLOAD, SEQ
from mt_kv.rules.membership import differ
from mt_kv.rules.shard import Role
from mt_kv.settings import ReplicaSettings
from mt_kv.storage.store import Batch
from mt_proto import kv_pb2 as pb

from mt_kv_sim.disk import Disk, SimStore
from mt_kv_sim.loop import PROCESS, Process, SimLoop

log = logging.getLogger(__name__)

LEASE_MS = 1_000
FAILOVER_TIMEOUT_MS = 1_500
HEARTBEAT_TIMEOUT_S = 1.0
MOVE_CALL_TIMEOUT_S = 2.0
T = TypeVar("T")


@dataclass
class Watch:
    """What the cluster's processes did that must never happen, seen as it happens."""

    primaries: dict[tuple[int, int], str] = field(default_factory=dict)  # (shard, epoch) ->
    committed: dict[tuple[int, int], tuple[int, bytes]] = field(default_factory=dict)
    published: dict[int, tuple[int, tuple[str, ...]]] = field(default_factory=dict)  # voters
    violations: list[str] = field(default_factory=list)

    def became_primary(self, replica: str, shard: int, epoch: int) -> None:
        held = self.primaries.setdefault((shard, epoch), replica)
        if held != replica:
            self.violations.append(
                f"two primaries of shard {shard} in epoch {epoch}: {held}, {replica}"
            )

    def reported(self, replica: str, progress: pb.ShardProgress, disk: Disk) -> None:
        """The manager elects by the logs replicas report: a report must not claim entries a
        crash could still take away (not yet synced)."""
        held = disk.log.get(progress.shard, {})
        durable = max(max(held, default=0), disk.positions.get(progress.shard, (0, 0))[0])
        if progress.last_seq > durable:
            self.violations.append(
                f"{replica} reported shard {progress.shard}'s log to {progress.last_seq}, "
                f"synced to {durable}"
            )

    def voters(self, shard: int, epoch: int, voters: Sequence[str]) -> None:
        """The manager published ``voters`` for ``shard``: one member from the set before."""
        before = self.published.get(shard)
        self.published[shard] = (epoch, tuple(voters))
        if before is not None and before[1] != tuple(voters) and differ(before[1], voters) > 1:
            self.violations.append(
                f"shard {shard}: voters {before[1]} (epoch {before[0]}) became {tuple(voters)} "
                f"(epoch {epoch}) in one step"
            )

    def applied(self, replica: str, shard: int, seq: int, epoch: int, payload: bytes) -> None:
        """An entry applied is committed: every replica must apply the same one at that seq."""
        held = self.committed.setdefault((shard, seq), (epoch, payload))
        if held != (epoch, payload):
            self.violations.append(
                f"shard {shard} seq {seq}: {replica} applied epoch {epoch}'s entry where epoch "
                f"{held[0]}'s was committed"
            )


class SimReplica(Replica):
    """The real replica, reporting its role changes and applied entries to the watch (it
    observes; it changes no decision and no I/O)."""

    watch: Watch

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
        super()._become(shard, role, epoch, primary, why, continues=continues, successor=successor)
        if role is Role.PRIMARY:
            self.watch.became_primary(self.id, shard.id, epoch)

    def _apply_committed(self, shard: Shard) -> None:
        before = shard.applied_seq
        super()._apply_committed(shard)
        for seq in range(before + 1, shard.applied_seq + 1):
            entry = shard.entry(seq)
            if entry is not None:
                self.watch.applied(self.id, shard.id, entry[SEQ], entry[EPOCH], entry[PAYLOAD])


class SimManager(ShardManager):
    """The real shard manager, showing the watch every assignment it publishes; what it
    saves (synchronously, as the real one fsyncs its file) outlives it in ``durable``."""

    watch: Watch
    durable: list[str]

    def save(self) -> None:
        super().save()
        self.durable[:] = [json.dumps(self.state())]
        for shard in self.shards:
            self.watch.voters(shard.id, shard.epoch, shard.replicas)


class SimCalls:
    """The Mover's calls to a shard's primary, over the simulation's network: run in the
    replica's process, lost with it or across a partition (Unavailable: the Mover tries the
    step again)."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def _call(self, addr: str, work: Callable[[Moves], Awaitable[T]]) -> T:
        node = self.cluster.nodes[addr.rsplit(":", 1)[0]]
        process, replica = node.process, node.replica
        if process is None or replica is None or not node.up:
            raise Unavailable(f"{node.name} is down")

        async def there() -> T:
            if node.replica is not replica:
                raise ConnectionError("no such process")
            return await work(Moves(replica))

        try:
            return await self.cluster.loop.net.call(process, there, MOVE_CALL_TIMEOUT_S)
        except ConnectionError as err:
            raise Unavailable(f"{node.name}: {err}") from None

    async def fence(self, addr: str, req: pb.MicroshardRequest) -> pb.MicroshardResponse:
        return await self._call(addr, lambda moves: moves.fence(req))

    async def export(self, addr: str, req: pb.MicroshardRequest) -> AsyncIterator[pb.SnapshotChunk]:
        async def chunks(moves: Moves) -> list[pb.SnapshotChunk]:
            return [chunk async for chunk in moves.export(req)]

        for chunk in await self._call(addr, chunks):
            yield chunk

    async def import_(self, addr: str, req: pb.ImportRequest) -> pb.MicroshardResponse:
        return await self._call(addr, lambda moves: moves.import_(req))

    async def purge(self, addr: str, req: pb.MicroshardRequest) -> pb.MicroshardResponse:
        return await self._call(addr, lambda moves: moves.purge(req))


def process_of(name: str, incarnation: int = 0) -> Process:
    process = Process(name, incarnation)
    process.context = contextvars.Context()
    process.context.run(PROCESS.set, process)
    return process


@dataclass(eq=False)
class Node:
    name: str
    disk: Disk = field(default_factory=Disk)
    process: Process | None = None
    replica: SimReplica | None = None
    clock_rate: float = 1.0  # a skewed clock runs faster or slower than true time
    clock_offset: float = 0.0
    incarnations: int = 0

    @property
    def up(self) -> bool:
        return self.process is not None and self.process.alive

    @property
    def link_addr(self) -> str:
        return f"{self.name}:7000"


class Cluster:
    def __init__(self, loop: SimLoop, *, replicas: int = 4, shards: int = 2) -> None:
        self.loop = loop
        self.rng = loop.rng
        self.shards = shards
        self.nodes = {f"kv-{i}": Node(f"kv-{i}") for i in range(1, replicas + 1)}
        self.watch = Watch()
        self.manager_saved: list[str] = []  # the manager's state file
        self.manager_incarnations = 0
        self.manager_process, self.manager, self.mover = self._new_manager()
        self.synced_rows = 0
        self.on_step: Callable[[ReplicaMove], None] = lambda move: None  # a move took a step
        self.on_move_step: Callable[[Move], None] = lambda move: None  # a μshard's move too
        self._steps: dict[int, tuple[str, str, str]] = {}  # shard -> its move as last seen
        self._move_steps: dict[int, str] = {}  # μshard -> its move's step as last seen

    def _new_manager(self) -> tuple[Process, SimManager, Mover]:
        """A shard manager process: as configured, then as it last saved its state."""
        process = process_of("manager", self.manager_incarnations)
        manager = SimManager(
            replicas={name: f"{name}:50061" for name in self.nodes},
            shards=self.shards,
            microshards=64,
            state_path=None,
            failover_timeout_ms=FAILOVER_TIMEOUT_MS,
            lease_ms=LEASE_MS,
            clock=self.loop.time,
        )
        manager.watch, manager.durable = self.watch, self.manager_saved
        if self.manager_saved:
            manager.restore(json.loads(self.manager_saved[0]))
        return process, manager, Mover(manager, SimCalls(self))

    def start(self) -> None:
        self._start_manager()
        for node in self.nodes.values():
            self.start_replica(node)

    def _start_manager(self) -> None:
        self.loop.create_task(self._manager_ticks(), context=self.manager_process.context)
        self.loop.create_task(self.mover.run(), context=self.manager_process.context)

    @property
    def manager_up(self) -> bool:
        return self.manager_process.alive

    def crash_manager(self) -> None:
        """kill -9 of the shard manager: what it saved is all a restart finds."""
        self.manager_process.alive = False

    def restart_manager(self) -> None:
        if not self.manager_up:
            self.manager_incarnations += 1
            self.manager_process, self.manager, self.mover = self._new_manager()
            self._start_manager()

    async def _manager_ticks(self) -> None:
        manager = self.manager  # (this incarnation's)
        while True:
            manager.tick()
            for move in manager.reconfigs.moves.values():
                seen = (move.source, move.target, move.step)
                if self._steps.get(move.shard) != seen:
                    self._steps[move.shard] = seen
                    self.on_step(move)
            for u, moving in manager.moves.items():
                if self._move_steps.get(u) != moving.step:
                    self._move_steps[u] = moving.step
                    self.on_move_step(moving)
            await asyncio.sleep(0.2)

    # ---------------------------------------------------------------- replica processes

    def start_replica(self, node: Node) -> None:
        node.incarnations += 1
        node.process = process_of(node.name, node.incarnations)
        self.loop.create_task(self._run_replica(node), context=node.process.context.copy())

    def crash(self, node: Node) -> None:
        """kill -9: its callbacks never run again; its store keeps only what was synced."""
        if node.process is not None:
            node.process.alive = False
        node.replica = None

    def wall_ms(self) -> int:
        """The wall clock (true time: the skew faults skew the replicas' monotonic clocks)."""
        return int(self.loop.now * 1000) + 1_700_000_000_000

    def _clock(self, node: Node) -> Callable[[], float]:
        return lambda: node.clock_offset + self.loop.now * node.clock_rate

    async def _run_replica(self, node: Node) -> None:
        settings = ReplicaSettings(
            replica_id=node.name,
            heartbeat_ms=100,
            append_interval_ms=50,
            replication_timeout_ms=1_000,
            checkpoint_interval_ms=500,
            log_retention_entries=150,  # small: followers far behind need snapshots
            max_entries_per_append=50,
            log_level="WARNING",
        )
        store = SimStore(self.loop, node.disk, self._synced)
        replica = SimReplica(
            settings,
            store,
            clock=self._clock(node),
            wall_ms=self.wall_ms,
            snapshot_from=self._snapshot_from,
            rng=random.Random(self.rng.random()),
        )
        replica.watch = self.watch
        await replica.load()
        host, _, port = node.link_addr.rpartition(":")
        await replication_link.serve(host, int(port), replica.append_batch)
        replica.start()
        node.replica = replica
        while True:
            await self._heartbeat(node, replica)
            await asyncio.sleep(settings.heartbeat_ms / 1000)

    async def _heartbeat(self, node: Node, replica: Replica) -> None:
        request = pb.HeartbeatRequest(
            replica_id=node.name,
            addr=f"{node.name}:50061",
            repl_addr=node.link_addr,
            shards=replica.progress(),
            incarnation=replica.incarnation,
        )
        for progress in request.shards:
            self.watch.reported(node.name, progress, node.disk)

        manager = self.manager

        async def beat() -> pb.HeartbeatResponse:
            return manager.heartbeat(request)

        try:
            reply = await self.loop.net.call(self.manager_process, beat, HEARTBEAT_TIMEOUT_S)
        except ConnectionError:
            return
        replica.assign(reply.shards, reply.lease_ms, dict(reply.repl_addrs))

    def _synced(self, batch: Batch) -> None:
        self.synced_rows += len(batch.log_appends)

    async def _snapshot_from(
        self, replica_id: str, request: pb.SnapshotRequest
    ) -> AsyncIterator[pb.SnapshotChunk]:
        node = self.nodes[replica_id]
        process, source = node.process, node.replica
        if process is None or source is None or not node.up:
            raise ConnectionError(f"{replica_id} is down")

        async def copy() -> list[pb.SnapshotChunk]:
            return [chunk async for chunk in source.snapshot(request)]

        for chunk in await self.loop.net.call(process, copy, 5.0):
            yield chunk

    # ---------------------------------------------------------------- views

    def primary_of(self, shard: int) -> Node | None:
        for node in self.nodes.values():
            held = node.replica.shards.get(shard) if node.replica and node.up else None
            if held is not None and held.role is Role.PRIMARY:
                return node
        return None

    def converged(self) -> bool:
        """Every replica up, no replica move under way, every shard led by the manager's
        primary, every voter has applied the same entries as that primary (so the same
        state), and no other replica holds a copy."""
        if not all(node.up and node.replica for node in self.nodes.values()):
            return False
        if self.manager.reconfigs.active() or self.manager.splits:
            return False
        if any(m.step != "done" for m in self.manager.moves.values()):
            return False
        for assignment in self.manager.shards:
            leader = self.nodes.get(assignment.primary)
            if leader is None or leader.replica is None or assignment.learners:
                return False
            lead = leader.replica.shards.get(assignment.id)
            if lead is None or lead.role is not Role.PRIMARY or lead.applied_seq < lead.last_seq:
                return False
            for node in self.nodes.values():
                assert node.replica is not None
                held = node.replica.shards.get(assignment.id)
                if node.name not in assignment.replicas:
                    if held is not None:
                        return False
                elif held is None or held.applied_seq != lead.applied_seq:
                    return False
        return True

    def states(self) -> dict[int, dict[str, dict[Any, Any]]]:
        """Each shard's data on each replica holding it."""
        held: dict[int, dict[str, dict[Any, Any]]] = {}
        for name, node in self.nodes.items():
            if node.replica is not None:
                for sid, shard in node.replica.shards.items():
                    held.setdefault(sid, {})[name] = dict(shard.data.items)
        return held
