"""Moving a shard's copy from one replica to another while the shard serves.

A :class:`ReplicaMove` goes through these steps, each judged from heartbeats (so it runs as it
is in the simulation) and saved with the manager's state (a restarted manager resumes it):

1. ``learner`` — the target joins as a learner (no epoch: it counts for nothing) and the
   primary streams it the log, or a snapshot. It is *caught up* once its durable log reaches
   the primary's applied position (less ``CATCH_UP_SLACK`` entries) on two reports at least
   ``CAUGHT_UP_HOLD_S`` apart. A target that dies or is not caught up within
   ``CATCH_UP_TIMEOUT_S`` is abandoned: dropped from the learners, never promoted.
2. ``grow`` — voters + target, as the next epoch, in place (the primary goes on leading);
   wait until that epoch is established (its primary applied an entry of it).
3. ``handoff`` — only if the source leads: the primary moves to another voter (fence and
   election, the target preferred), and that epoch is established.
4. ``shrink`` — voters - source, in place; established, the move is ``done`` and the source
   drops its copy (it is no longer a member).

Every voter set goes one member from the last established one (:mod:`mt_kv.rules.membership`),
so a 3-set grows to 4 and shrinks back to 3, never swapping in one step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from mt_proto import kv_pb2 as pb

from mt_kv.rules.breaks import broken
from mt_kv.rules.membership import allowed

if TYPE_CHECKING:
    from mt_kv.manager.core import ShardAssignment, ShardManager

CATCH_UP_SLACK = 50  # entries a learner may still lack when it joins the voters
CAUGHT_UP_HOLD_S = 0.2
CATCH_UP_TIMEOUT_S = 30.0

STEPS = ("learner", "grow", "handoff", "shrink", "done", "abandoned")


@dataclass
class ReplicaMove:
    shard: int
    source: str  # leaving the shard
    target: str  # joining it
    step: str = "learner"
    error: str = ""  # why it was abandoned, or why a step waits
    started_at: float = 0.0  # manager clock (restarts with the manager)
    caught_up_at: float = 0.0  # first report caught up (0: not since the last behind)

    @property
    def finished(self) -> bool:
        return self.step in ("done", "abandoned")

    def info(self) -> pb.ReplicaMove:
        return pb.ReplicaMove(
            shard=self.shard,
            source=self.source,
            target=self.target,
            step=self.step,
            error=self.error,
        )


class Reconfigs:
    """The replica moves in progress (one per shard at a time), advanced on every tick."""

    def __init__(self, manager: ShardManager) -> None:
        self.manager = manager
        self.moves: dict[int, ReplicaMove] = {}  # by shard: in progress, and the last finished

    def request(self, shard_id: int, source: str, target: str) -> ReplicaMove:
        """Start moving ``shard_id``'s copy on ``source`` to ``target`` (ValueError: not a
        move that can be made now)."""
        manager = self.manager
        if not 0 <= shard_id < len(manager.shards):
            raise ValueError(f"no shard {shard_id}")
        shard = manager.shards[shard_id]
        if source not in shard.replicas:
            raise ValueError(f"{source!r} holds no voting copy of shard {shard_id}")
        if target not in manager.replicas or target in shard.replicas:
            raise ValueError(f"{target!r} is not a replica that could take shard {shard_id}")
        current = self.moves.get(shard_id)
        if current is not None and not current.finished:
            if (current.source, current.target) == (source, target):
                return current
            raise ValueError(f"shard {shard_id} is moving already: {current}")
        move = ReplicaMove(shard_id, source, target, started_at=manager.now())
        self.moves[shard_id] = move
        return move

    def active(self) -> list[ReplicaMove]:
        return [m for m in self.moves.values() if not m.finished]

    def advance(self, now: float) -> bool:
        """One step of every move that can take one; True if the assignment changed."""
        return any([self._advance(move, now) for move in self.active()])

    def _advance(self, move: ReplicaMove, now: float) -> bool:
        shard = self.manager.shards[move.shard]
        if move.step == "learner":
            return self._learn(move, shard, now)
        if not self.manager.established(shard) and not broken("reconfig_before_established"):
            return False
        if move.step == "shrink":
            move.step = "done"
            return True
        if not self.manager.alive(move.target, now):  # joined, then lost: back out
            return self._remove(move, shard, move.target, "abandoned", "the target was lost")
        if move.source == shard.primary:  # (again, if a failover elected it once more)
            move.step = "handoff"
            self.manager.hand_off(shard.id, move.target)
            return True
        return self._remove(move, shard, move.source, "shrink", "")

    def _learn(self, move: ReplicaMove, shard: ShardAssignment, now: float) -> bool:
        manager = self.manager
        if move.target not in shard.learners:
            shard.learners.append(move.target)
            return True
        if not manager.alive(move.target, now):
            return self._abandon(move, shard, "the target is not heard from")
        if now - move.started_at > CATCH_UP_TIMEOUT_S:
            return self._abandon(move, shard, f"not caught up in {CATCH_UP_TIMEOUT_S:g} s")
        if not self._caught_up(move, shard):
            move.caught_up_at = 0.0
            return False
        if not move.caught_up_at:
            move.caught_up_at = now
        if now - move.caught_up_at < CAUGHT_UP_HOLD_S or not manager.established(shard):
            return False
        voters = [*shard.replicas, move.target]
        if broken("swap_in_one_step") and move.source != shard.primary:
            voters.remove(move.source)
            move.step = "shrink"
        if not allowed(shard.stable, shard.replicas, voters) and not _breaking():
            move.error = f"voters {shard.replicas} not yet established"
            return False
        shard.learners.remove(move.target)
        manager.step_in_place(shard, voters)
        move.step = "shrink" if move.step == "shrink" else "grow"
        move.error = ""
        return True

    def _caught_up(self, move: ReplicaMove, shard: ShardAssignment) -> bool:
        views = self.manager.replicas
        theirs = views[move.target].progress.get(shard.id)
        lead = views[shard.primary].progress.get(shard.id) if shard.primary else None
        if theirs is None or lead is None:
            return False
        return theirs.epoch == shard.epoch and theirs.last_seq + CATCH_UP_SLACK >= lead.applied_seq

    def _remove(
        self, move: ReplicaMove, shard: ShardAssignment, leaving: str, step: str, why: str
    ) -> bool:
        voters = [r for r in shard.replicas if r != leaving]
        if leaving == shard.primary:
            return False
        if not allowed(shard.stable, shard.replicas, voters) and not _breaking():
            return False
        self.manager.step_in_place(shard, voters)
        move.step, move.error = step, why
        return True

    def _abandon(self, move: ReplicaMove, shard: ShardAssignment, why: str) -> bool:
        if move.target in shard.learners:
            shard.learners.remove(move.target)
        move.step, move.error = "abandoned", why
        return True


def _breaking() -> bool:
    """A membership rule broken on purpose (the simulation's ``BREAK``)."""
    return broken("swap_in_one_step") or broken("reconfig_before_established")
