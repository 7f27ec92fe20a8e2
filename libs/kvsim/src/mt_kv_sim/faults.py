"""The faults of a run, drawn from its seed: crashes (a restart later; the store keeps only what
was synced) of one replica or of all at once (a power loss), partitions, connection resets,
stop-the-world pauses past the lease, network and disk slowdowns, clocks running fast or slow,
and planned primary handoffs.
Stale bytes of a reset connection that still arrive — requests reordered after a newer
connection's, or repeated there — are counted by the network as they happen."""

from __future__ import annotations

import asyncio
from collections import Counter

from mt_kv_sim.cluster import Cluster, Node

KINDS = ("crash", "partition", "reset", "pause", "delay", "slow_disk", "power_loss", "handoff")
CLOCK_SKEW = 0.03  # a replica's clock runs up to 3% fast or slow (the lease allows 10%)


class Faults:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.loop = cluster.loop
        self.rng = cluster.rng
        self.counts: Counter[str] = Counter()
        self._healing: list[asyncio.TimerHandle] = []

    def skew_clocks(self) -> None:
        for node in self.cluster.nodes.values():
            if self.rng.random() < 0.5:
                node.clock_rate = 1 + self.rng.uniform(-CLOCK_SKEW, CLOCK_SKEW)
                node.clock_offset = self.rng.uniform(0, 1000)
                self.counts["clock_skew"] += 1

    async def run(self, until: float) -> None:
        while self.loop.time() < until:
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            kind = self.rng.choice(KINDS)
            node = self.rng.choice(list(self.cluster.nodes.values()))
            if getattr(self, f"_{kind}")(node):
                self.counts[kind] += 1

    def _later(self, delay_s: float, fix: object) -> None:
        assert callable(fix)
        self._healing.append(self.loop.call_later(delay_s, fix))

    def _down(self) -> int:
        return sum(1 for n in self.cluster.nodes.values() if not n.up)

    def _crash(self, node: Node) -> bool:
        if not node.up or self._down() >= 1:
            return False
        self.cluster.crash(node)
        self._later(self.rng.uniform(0.2, 3.0), lambda: self._restart(node))
        return True

    def _power_loss(self, node: Node) -> bool:
        if self.rng.random() < 0.6:  # rarer than the others
            return False
        for each in self.cluster.nodes.values():
            if each.up:
                self.cluster.crash(each)
            self._later(self.rng.uniform(0.2, 2.0), lambda each=each: self._restart(each))
        return True

    def _handoff(self, node: Node) -> bool:
        """A planned primary move (the shard manager's own; far more frequent than failures
        in production): the old primary may still hold its lease while the new one starts."""
        manager = self.cluster.manager
        shard = self.rng.choice(manager.shards)
        if not shard.primary or shard.primary == node.name:
            return False
        manager.hand_off(shard.id, node.name)
        return True

    def _restart(self, node: Node) -> None:
        if not node.up:
            self.cluster.start_replica(node)

    def _partition(self, node: Node) -> bool:
        others = [n for n in (*self.cluster.nodes, "manager") if n != node.name]
        cut = (
            [frozenset((node.name, o)) for o in others]
            if self.rng.random() < 0.6
            else [frozenset((node.name, self.rng.choice(others)))]  # one link only
        )
        self.loop.net.cut.update(cut)
        self._later(self.rng.uniform(0.3, 3.0), lambda: self.loop.net.cut.difference_update(cut))
        return True

    def _reset(self, node: Node) -> bool:
        return self.loop.net.abort_one()

    def _pause(self, node: Node) -> bool:
        process = node.process
        if process is None or not process.alive:
            return False
        process.frozen_until = self.loop.time() + self.rng.uniform(0.1, 2.5)  # past the lease
        return True

    def _delay(self, node: Node) -> bool:
        self.loop.net.slow_until = self.loop.time() + self.rng.uniform(0.2, 1.0)
        return True

    def _slow_disk(self, node: Node) -> bool:
        node.disk.slow_until = self.loop.time() + self.rng.uniform(0.2, 1.5)
        return True

    def heal(self) -> None:
        """Every fault ends: partitions healed, pauses over, the crashed restarted."""
        for handle in self._healing:
            handle.cancel()
        self.loop.net.cut.clear()
        self.loop.net.slow_until = 0.0
        for node in self.cluster.nodes.values():
            node.disk.slow_until = 0.0
            if node.process is not None:
                node.process.frozen_until = 0.0
            if not node.up:
                self.cluster.start_replica(node)
