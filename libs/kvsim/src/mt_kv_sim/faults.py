"""The faults of a run, drawn from its seed: crashes (a restart later; the store keeps only what
was synced) of one replica or of all at once (a power loss), partitions, connection resets,
stop-the-world pauses past the lease, network and disk slowdowns, clocks running fast or slow,
and planned primary handoffs.
Stale bytes of a reset connection that still arrive — requests reordered after a newer
connection's, or repeated there — are counted by the network as they happen."""

from __future__ import annotations

import asyncio
from collections import Counter

from mt_kv.manager.core import Move
from mt_kv.manager.reconfig import ReplicaMove
from mt_kv_contract.keys import microshard

from mt_kv_sim.cluster import Cluster, Node

KINDS = (
    "crash",
    "partition",
    "reset",
    "pause",
    "delay",
    "slow_disk",
    "power_loss",
    "handoff",
    "replica_move",
    "microshard_move",
    "split",
    "manager_crash",
)
MAX_SHARDS = 4  # splits stop here (the sim starts with 2)
STRIKE_AT_STEP = 0.3
CLOCK_SKEW = 0.03  # a replica's clock runs up to 3% fast or slow (the lease allows 10%)


class Faults:
    def __init__(self, cluster: Cluster, keys: list[str]) -> None:
        self.cluster = cluster
        self.keys = keys  # the workload's: μshard moves take theirs
        self.loop = cluster.loop
        self.rng = cluster.rng
        self.counts: Counter[str] = Counter()
        self._healing: list[asyncio.TimerHandle] = []
        self._striking = False  # faults strike until heal()
        cluster.on_step = self._strike_at_step
        cluster.on_move_step = self._strike_at_move_step

    def skew_clocks(self) -> None:
        for node in self.cluster.nodes.values():
            if self.rng.random() < 0.5:
                node.clock_rate = 1 + self.rng.uniform(-CLOCK_SKEW, CLOCK_SKEW)
                node.clock_offset = self.rng.uniform(0, 1000)
                self.counts["clock_skew"] += 1

    async def run(self, until: float) -> None:
        self._striking = True
        # Each seed its own mix: some all partitions and pauses, some all moves — a fault
        # drawn as often as every other is too thin to make a rare interleaving likely.
        weights = [self.rng.random() ** 2 for _ in KINDS]
        while self.loop.time() < until:
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))
            kind = self.rng.choices(KINDS, weights)[0]
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

    def _manager_crash(self, node: Node | None) -> bool:
        """The shard manager killed, restarted a moment later from what it saved."""
        if not self.cluster.manager_up or (node is not None and self.rng.random() < 0.7):
            return False  # (at random, rarer than the others: a dead manager fails nothing over)
        self.cluster.crash_manager()
        self._later(self.rng.uniform(0.2, 3.0), self.cluster.restart_manager)
        return True

    def _handoff(self, node: Node) -> bool:
        """A planned primary move (the shard manager's own; far more frequent than failures
        in production): the old primary may still hold its lease while the new one starts."""
        if not self.cluster.manager_up:
            return False
        manager = self.cluster.manager
        shard = self.rng.choice(manager.shards)
        if not shard.primary or shard.primary == node.name:
            return False
        manager.hand_off(shard.id, node.name)
        return True

    def _replica_move(self, node: Node) -> bool:
        """The shard manager moves a shard's copy to ``node`` (a learner, then 3 -> 4 -> 3
        voters): from a random voter, the primary too."""
        if not self.cluster.manager_up:
            return False
        manager = self.cluster.manager
        shard = self.rng.choice(manager.shards)
        if node.name in (*shard.replicas, *shard.learners):
            return False
        try:
            manager.reconfigs.request(shard.id, self.rng.choice(shard.replicas), node.name)
        except ValueError:
            return False  # (one move per shard at a time)
        return True

    def _microshard_move(self, node: Node) -> bool:
        """Live resharding: the μshard of a workload key moves to another shard."""
        if not self.cluster.manager_up:
            return False
        manager = self.cluster.manager
        key = self.rng.choice(self.keys)
        u = microshard("test", key.encode(), len(manager.mapping))
        others = [s.id for s in manager.shards if s.id != manager.mapping[u]]
        moving = manager.moves.get(u)
        if not others or (moving is not None and moving.step != "done"):
            return False
        self.cluster.mover.request(u, self.rng.choice(others))
        return True

    def _split(self, node: Node) -> bool:
        """A shard split: a new shard takes every other of its μshards, one at a time."""
        if not self.cluster.manager_up:
            return False
        manager = self.cluster.manager
        if len(manager.shards) >= MAX_SHARDS or manager.splits:
            return False
        try:
            manager.split(self.rng.choice(manager.shards).id)
        except ValueError:
            return False
        self.cluster.mover.wake()
        return True

    def _strike_at_move_step(self, move: Move) -> None:
        """Often, as a μshard move takes a step, a crash of either shard's primary or of the
        shard manager, or the two primaries cut off from the rest."""
        if move.step == "done" or self.rng.random() > STRIKE_AT_STEP or not self._striking:
            return
        shards = self.cluster.manager.shards
        victims = {"from": shards[move.from_shard].primary, "to": shards[move.to_shard].primary}
        role = self.rng.choice([*sorted(victims), "cut", "manager"])
        if role == "cut":
            self._strike(f"cut@move.{move.step}", cut=set(victims.values()) - {""})
        else:
            self._strike(f"crash@move.{move.step}.{role}", crash=victims.get(role, role))

    def _strike_at_step(self, move: ReplicaMove) -> None:
        """Often, as a replica move takes a step, a crash of one it involves or of the shard
        manager, or the shard's primary and the target cut off from the rest — at once or a
        moment later — so each step is seen interrupted by each."""
        if move.finished or self.rng.random() > STRIKE_AT_STEP or not self._striking:
            return
        shard = self.cluster.manager.shards[move.shard]
        victims = {"source": move.source, "target": move.target, "primary": shard.primary}
        role = self.rng.choice([*sorted(victims), "split", "manager"])
        if role == "split":
            self._strike(f"split@{move.step}", cut={shard.primary, move.target} - {""})
        else:
            self._strike(f"crash@{move.step}.{role}", crash=victims.get(role, role))

    def _strike(self, at: str, *, crash: str = "", cut: set[str] | None = None) -> None:
        """At once or a moment later: ``crash`` (a replica, or "manager") killed, or the
        replicas ``cut`` cut off; counted as ``at`` if it struck."""

        def strike() -> None:
            if cut is not None:
                struck = self._cut_off(cut)
            elif crash == "manager":
                struck = self._manager_crash(None)
            else:
                node = self.cluster.nodes.get(crash)
                struck = node is not None and self._crash(node)
            if struck:
                self.counts[at] += 1

        self._later(self.rng.choice([0.0, self.rng.uniform(0.0, 0.5)]), strike)

    def _cut_off(self, side: set[str]) -> bool:
        """``side`` cut off from every other replica and the manager, for a while."""
        everyone = [*self.cluster.nodes, "manager"]
        cut = [frozenset((a, b)) for a in side for b in everyone if b not in side]
        if not cut:
            return False
        self.loop.net.cut.update(cut)
        self._later(self.rng.uniform(0.3, 3.0), lambda: self.loop.net.cut.difference_update(cut))
        return True

    def _restart(self, node: Node) -> None:
        if not node.up:
            self.cluster.start_replica(node)

    def _partition(self, node: Node) -> bool:
        everyone = [*self.cluster.nodes, "manager"]
        others = [n for n in everyone if n != node.name]
        draw = self.rng.random()
        if draw < 0.45:  # the node alone
            cut = [frozenset((node.name, o)) for o in others]
        elif draw < 0.7:  # one link only
            cut = [frozenset((node.name, self.rng.choice(others)))]
        else:  # two random sides, the node on one
            return self._cut_off({node.name} | {o for o in others if self.rng.random() < 0.4})
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
        self._striking = False
        for handle in self._healing:
            handle.cancel()
        self.loop.net.cut.clear()
        self.loop.net.slow_until = 0.0
        self.cluster.restart_manager()
        for node in self.cluster.nodes.values():
            node.disk.slow_until = 0.0
            if node.process is not None:
                node.process.frozen_until = 0.0
            if not node.up:
                self.cluster.start_replica(node)
