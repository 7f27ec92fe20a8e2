"""An asyncio event loop on virtual time, where "processes" can die or freeze and the network is
simulated: nothing real runs, so a run is a function of its seed.

- Time: the loop's clock jumps to the next timer instead of waiting (the selector never blocks).
- Processes: a context variable names the process every callback and task belongs to (tasks
  inherit it). A killed process's callbacks never run again — its tasks stop where they are,
  as with kill -9; a frozen one's wait until it thaws (a stop-the-world pause).
- Network: ``create_connection``/``create_server`` make in-memory transports between processes.
  Bytes arrive in order after a latency drawn per message; across a partition they wait (TCP
  retransmits) until it heals or the connection is aborted; an aborted connection's bytes
  still in flight may yet arrive (a stale request, reordered after a newer connection's).
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import selectors
import socket
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Process:
    name: str  # the node it runs ("kv-1"); a restart is a new Process of the same name
    incarnation: int = 0
    alive: bool = True
    frozen_until: float = 0.0
    context: contextvars.Context = field(default_factory=contextvars.Context)

    def __repr__(self) -> str:
        return f"{self.name}#{self.incarnation}"


PROCESS: contextvars.ContextVar[Process | None] = contextvars.ContextVar(
    "sim_process", default=None
)


class _NeverBlocks(selectors.BaseSelector):
    """The loop's selector: it has nothing to wait for, so a wait is a jump of the clock."""

    def __init__(self, loop: SimLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled("nothing left to run and no timer set")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class Stalled(RuntimeError):
    pass


class SimLoop(asyncio.SelectorEventLoop):
    def __init__(self, rng: random.Random) -> None:
        super().__init__(selector=_NeverBlocks(self))
        self.now = 0.0
        self.rng = rng
        self.net = Network(self)

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += max(0.0, seconds)

    # Every callback runs only while its process lives (and not while it is frozen).

    def call_soon(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        return super().call_soon(self._guard(callback, context), *args, context=context)

    def call_at(  # type: ignore[override]
        self,
        when: float,
        callback: Callable[..., Any],
        *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        return super().call_at(when, self._guard(callback, context), *args, context=context)

    def _guard(
        self, callback: Callable[..., Any], context: contextvars.Context | None
    ) -> Callable[..., Any]:
        process = (context or contextvars.copy_context()).get(PROCESS)
        if process is None:
            return callback

        def guarded(*args: Any) -> None:
            if not process.alive:
                return
            if process.frozen_until > self.now:
                super(SimLoop, self).call_at(
                    process.frozen_until, guarded, *args, context=contextvars.copy_context()
                )
                return
            callback(*args)

        return guarded

    # The network, in place of sockets.

    async def create_connection(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int, **_: Any
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        return await self.net.connect(protocol_factory, f"{host}:{port}")

    async def create_server(  # type: ignore[override]
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int, **_: Any
    ) -> SimServer:
        return self.net.listen(f"{host}:{port}", protocol_factory)


class SimServer:
    def __init__(self, net: Network, addr: str) -> None:
        self._net, self.addr = net, addr
        self.sockets: list[socket.socket] = []

    def close(self) -> None:
        self._net.servers.pop(self.addr, None)


class Network:
    """Who can reach whom, and how long bytes take."""

    def __init__(self, loop: SimLoop) -> None:
        self.loop = loop
        self.servers: dict[str, tuple[Process, Callable[[], asyncio.Protocol]]] = {}
        self.cut: set[frozenset[str]] = set()  # node pairs that cannot reach each other
        self.latency_s = (0.0002, 0.002)  # per message, uniform
        self.slow_until = 0.0  # a delay spike: latencies x20 until then
        self.transports: list[SimTransport] = []
        self.stale_deliveries = 0  # bytes of an aborted connection that still arrived
        self._seq = itertools.count()

    def latency(self) -> float:
        low, high = self.latency_s
        latency = self.loop.rng.uniform(low, high)
        return latency * 20 if self.loop.now < self.slow_until else latency

    def reachable(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self.cut

    def listen(self, addr: str, factory: Callable[[], asyncio.Protocol]) -> SimServer:
        process = PROCESS.get()
        assert process is not None, "a server needs a process"
        self.servers[addr] = (process, factory)
        return SimServer(self, addr)

    async def connect(
        self, factory: Callable[[], asyncio.Protocol], addr: str
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        client = PROCESS.get()
        assert client is not None, "a connection needs a process"
        await asyncio.sleep(self.latency())
        server = self.servers.get(addr)
        if server is None or not server[0].alive:
            raise ConnectionRefusedError(f"nothing listens at {addr}")
        if not self.reachable(client.name, server[0].name):
            await asyncio.sleep(3600)  # a SYN into a partition: the caller's timeout ends it
        server_process, server_factory = server
        ours = SimTransport(self, client)
        theirs = SimTransport(self, server_process)
        ours.peer, theirs.peer = theirs, ours
        protocol = factory()
        ours.protocol = protocol
        theirs.protocol = server_process.context.run(server_factory)
        self.transports += [ours, theirs]
        server_process.context.run(theirs.protocol.connection_made, theirs)
        protocol.connection_made(ours)
        return ours, protocol

    def rpc_ok(self, a: Process, b: Process) -> bool:
        return a.alive and b.alive and self.reachable(a.name, b.name)

    async def call(self, target: Process, work: Callable[[], Awaitable[T]], timeout_s: float) -> T:
        """A request to ``target`` (a gRPC call's stand-in): it runs there, in that process;
        lost across a partition either way, or with the process. ConnectionError if nothing
        came back within ``timeout_s`` (the outcome unknown)."""
        caller = PROCESS.get()
        assert caller is not None

        async def there() -> T:
            return await work()

        async def exchange() -> T:
            await asyncio.sleep(self.latency())
            await self._until_reachable(caller, target)
            task = self.loop.create_task(there(), context=target.context.copy())
            # An answer that came too late is nobody's (run where the work ran: the caller
            # may have been killed meanwhile, and its callbacks never run).
            task.add_done_callback(_retrieved, context=target.context)
            answer = await asyncio.shield(task)
            await asyncio.sleep(self.latency())
            await self._until_reachable(caller, target)
            return answer

        try:
            return await asyncio.wait_for(exchange(), timeout_s)
        except TimeoutError:
            raise ConnectionError(f"no answer from {target} in {timeout_s:g}s") from None

    async def _until_reachable(self, a: Process, b: Process) -> None:
        """Retransmitted until the partition heals (or the caller's timeout ends it)."""
        while not self.rpc_ok(a, b):  # noqa: ASYNC110 (faults change it, not an event)
            await asyncio.sleep(0.05)

    def deliver(self, source: SimTransport, data: bytes) -> None:
        target = source.peer
        assert target is not None
        when = max(self.loop.now + self.latency(), source.last_delivery + 1e-9)
        source.last_delivery = when
        index, source.sent = source.sent, source.sent + 1
        self._schedule(when, target, index, data)

    def _schedule(self, when: float, target: SimTransport, index: int, data: bytes) -> None:
        def arrive() -> None:
            if not self.reachable(target.process.name, target.peer_name):
                self._schedule(self.loop.now + 0.05, target, index, data)  # retransmitted
                return
            target.arrived[index] = data
            while target.received in target.arrived:  # in order, as TCP hands bytes over
                chunk = target.arrived.pop(target.received)
                target.received += 1
                if target.closed_at:
                    if self.loop.rng.random() < 0.7:
                        continue  # an aborted connection: most of what was in flight is gone
                    self.stale_deliveries += 1
                target.protocol.data_received(chunk)

        self.loop.call_at(when, arrive, context=target.process.context.copy())

    def abort_one(self) -> bool:
        """A connection reset (the kind of fault a middlebox or a restart causes)."""
        live = [t for t in self.transports if not t.closed_at and t.process.alive]
        self.transports = live
        if not live:
            return False
        self.loop.rng.choice(live).abort()
        return True


def _retrieved(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


_ids = itertools.count()


class SimTransport(asyncio.Transport):
    def __init__(self, net: Network, process: Process) -> None:
        super().__init__()
        self.net = net
        self.process = process
        self.peer: SimTransport | None = None
        self.protocol: asyncio.Protocol = asyncio.Protocol()
        self.last_delivery = 0.0
        self.sent = 0  # chunks written (numbered, so the peer hands them over in order)
        self.received = 0
        self.arrived: dict[int, bytes] = {}
        self.closed_at = 0.0
        self.id = next(_ids)

    @property
    def peer_name(self) -> str:
        return self.peer.process.name if self.peer is not None else ""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed_at or self.peer is None:
            return
        self.net.deliver(self, bytes(data))

    def is_closing(self) -> bool:
        return bool(self.closed_at)

    def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self.closed_at:
            return
        self.closed_at = self.net.loop.now or 1e-9
        loop = self.net.loop
        loop.call_soon(self.protocol.connection_lost, None, context=self.process.context.copy())
        peer = self.peer
        if peer is not None and not peer.closed_at:
            peer.closed_at = loop.now or 1e-9
            loop.call_at(
                loop.now + self.net.latency(),
                peer.protocol.connection_lost,
                None,
                context=peer.process.context.copy(),
            )

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default
