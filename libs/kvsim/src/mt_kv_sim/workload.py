"""Clients of the simulated cluster: concurrent strong reads and writes of a few keys, each
recorded (call, return, output) for the linearizability checker. A client routes by the
manager's table and retries by the KV's one retry rule (``mt_kv_contract.errors.next_step``):
a refusal again, and a write of unknown outcome again too, as it was — the same session and
number (exactly-once, ``mt_kv.rules.sessions``). Each write also increments a count beside
its key, so that a write applied twice shows as a count above the acknowledged writes."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from mt_chaos.linearizability import UNKNOWN, Op
from mt_core.errors import MinithreadsError
from mt_kv.replica.core import Replica
from mt_kv_client.sessions import WriteSession
from mt_kv_contract.errors import Step, next_step
from mt_kv_contract.keys import Key, microshard
from mt_proto import kv_pb2 as pb

from mt_kv_sim.cluster import Cluster, process_of

T = TypeVar("T")
CALL_TIMEOUT_S = 1.5  # a client's deadline per attempt
ATTEMPTS = 12


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)
    unknown: int = 0  # writes whose outcome the client could not know
    gave_up: int = 0  # reads never answered (recorded as nothing: they constrain nothing)
    repeated: int = 0  # writes sent again after an unknown outcome
    # Per key: writes acknowledged, and writes whose outcome stayed unknown (see count_key).
    acked: Counter[str] = field(default_factory=Counter)
    unsure: Counter[str] = field(default_factory=Counter)


class Client:
    def __init__(
        self,
        cluster: Cluster,
        name: str,
        history: History,
        keys: list[str],
        write_share: float = 0.5,
        sessions: bool = True,
    ) -> None:
        self.write_share = write_share  # mostly readers keep a table as long as reads work
        self.cluster = cluster
        self.loop = cluster.loop
        self.name = name
        self.history = history
        self.keys = keys
        self.table: pb.RoutingTable | None = None
        self.written = 0
        self.process = process_of(name)
        self.sessions = sessions  # without: a write of unknown outcome is never repeated
        self.session = WriteSession(
            wall_ms=cluster.wall_ms, session_id=1 + sum(map(ord, name)) * 7919
        )

    async def run(self, until: Callable[[], bool]) -> None:
        rng = self.loop.rng
        while not until():
            key = rng.choice(self.keys)
            if rng.random() < self.write_share:
                self.written += 1
                await self.put(key, f"{self.name}.{self.written}")
            else:
                await self.get(key)
            await asyncio.sleep(rng.expovariate(1 / 0.03))

    def _key(self, key: str) -> Key:
        return Key("test", key.encode(), b"v")

    def _count_key(self, key: str) -> Key:
        """Beside the key (same partition, so the same write): how many writes it took."""
        return Key("test", key.encode(), b"n")

    def _shard(self, key: str) -> int:
        assert self.table is not None
        u = microshard("test", key.encode(), self.table.microshards)
        return self.table.microshard_to_shard[u]

    async def _refresh(self) -> None:
        manager = self.cluster.manager

        async def table() -> pb.RoutingTable:
            return manager.routing_table()

        try:
            self.table = await self.loop.net.call(self.cluster.manager_process, table, 1.0)
        except ConnectionError:
            await asyncio.sleep(0.05)

    async def _attempt(
        self,
        key: str,
        work: Callable[[Replica, pb.Route], Awaitable[T]],
        shard: int | None = None,
    ) -> T | None:
        """One attempt at the primary of the key's shard — or of ``shard``, where an earlier
        attempt may have landed (None: no primary known: try again later)."""
        if self.table is None:
            await self._refresh()
            if self.table is None:
                return None
        if shard is None:
            shard = self._shard(key)
        info = self.table.shards[shard]
        node = self.cluster.nodes.get(info.primary)
        if node is None or node.process is None:
            return None
        replica = node.replica
        route = pb.Route(shard=shard, epoch=info.epoch)

        async def there() -> T:
            if replica is None or node.replica is not replica:
                raise ConnectionError("no such process")  # (a refused connection)
            return await work(replica, route)

        return await self.loop.net.call(node.process, there, CALL_TIMEOUT_S)

    async def put(self, key: str, value: str) -> None:
        call = self.loop.time()
        request = pb.WriteRequest(
            mutations=[
                pb.Mutation(key=_pb(self._key(key)), put=pb.Mutation.Put(value=value.encode())),
                pb.Mutation(
                    key=_pb(self._count_key(key)), increment=pb.Mutation.Increment(delta=1)
                ),
            ]
        )
        if self.sessions:
            self.session.tag(request)

        async def write(replica: Replica, route: pb.Route) -> pb.WriteResponse:
            sent = pb.WriteRequest()
            sent.CopyFrom(request)  # (an attempt still in the network keeps its own copy)
            sent.route.CopyFrom(route)
            return await replica.write(sent)

        # As the real client: once an attempt may have landed, repeats go to the same shard —
        # its record answers them, or its fence refuses them (Moved: it never landed there).
        pinned: int | None = None
        for _ in range(ATTEMPTS):
            if self.table is None:
                await self._refresh()
            routed = pinned if pinned is not None or self.table is None else self._shard(key)
            try:
                done = await self._attempt(key, write, routed)
            except ConnectionError:
                await self._refresh()  # as the real client: the next call finds the new primary
                if not self.sessions:
                    break  # it may have happened
                self.history.repeated += 1  # a timeout, a lost answer: sent again as it was
                pinned = routed
                continue
            except MinithreadsError as err:
                step = next_step(err, idempotent=self.sessions)
                if step is Step.ANSWER:
                    raise
                if step is Step.UNKNOWN:
                    await self._refresh()
                    break
                if step is Step.ROUTE_AGAIN:
                    pinned = None
                elif next_step(err, idempotent=False) is Step.UNKNOWN:
                    self.history.repeated += 1
                    pinned = routed
                await self._refresh()
                await asyncio.sleep(0.05)
                continue
            if done is None:
                await self._refresh()
                await asyncio.sleep(0.05)
                continue
            self.history.ops.append(Op(key, "put", value, None, call, self.loop.time()))
            self.history.acked[key] += 1
            return
        self.history.unknown += 1
        self.history.unsure[key] += 1
        self.history.ops.append(Op(key, "put", value, UNKNOWN, call, math.inf))

    async def count(self, key: str) -> int | None:
        """The count beside ``key`` (a strong read), None if it could not be read."""
        item = await self._strong_read(key, self._count_key(key))
        if item is None:
            return None
        return int(item.value) if item.found else 0

    async def get(self, key: str) -> None:
        call = self.loop.time()
        item = await self._strong_read(key, self._key(key))
        if item is None:
            self.history.gave_up += 1
            return
        output = item.value.decode() if item.found else None
        self.history.ops.append(Op(key, "get", None, output, call, self.loop.time()))

    async def _strong_read(self, key: str, read_key: Key) -> pb.Item | None:
        """``read_key`` (in ``key``'s partition) read at its primary, refusals and lost
        answers tried again; None if no attempt got an answer."""
        request_key = _pb(read_key)

        async def read(replica: Replica, route: pb.Route) -> pb.GetResponse:
            read = pb.ReadOptions(consistency=pb.STRONG)
            return await replica.get(pb.GetRequest(route=route, keys=[request_key], read=read))

        for _ in range(ATTEMPTS):
            try:
                got = await self._attempt(key, read)
            except ConnectionError:
                got = None
            except MinithreadsError as err:
                if next_step(err, idempotent=True) is Step.ANSWER:
                    raise
                got = None
            if got is not None:
                return got.items[0]
            await self._refresh()
            await asyncio.sleep(0.05)
        return None


def _pb(key: Key) -> pb.Key:
    return pb.Key(keyspace=key.keyspace, partition=key.partition, key=key.key)
