"""Where shard copies should be: the replica moves that even out the count of copies per
replica and empty draining replicas, a few at a time. Pure: the shard manager gives it the
assignment and which replicas may take copies, and starts the moves it returns.

- A draining replica's copies go first, each to the live replica holding fewest copies that
  is not already a member of that shard.
- Then, nothing left to drain, counts: while the fullest and the emptiest live replica
  differ by two copies or more, one copy moves from the one to the other (ending with every
  replica within one copy of the mean). A shard whose primary is the fullest replica is taken
  last: its move needs a handoff.
- At most one move per replica at a time (as source or as target), at most ``max_moves`` in
  all, and none for a shard already moving: each costs the target a catch-up.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Copyset:
    """One shard as placement sees it."""

    shard: int
    voters: tuple[str, ...]
    primary: str
    moving: bool = False  # a replica move (or learner) of it is under way


@dataclass(frozen=True)
class Planned:
    shard: int
    source: str
    target: str


def counts(shards: Sequence[Copyset], replicas: Collection[str]) -> dict[str, int]:
    """Copies held per replica (every replica named, holding none or more)."""
    held = dict.fromkeys(replicas, 0)
    for shard in shards:
        for voter in shard.voters:
            held[voter] = held.get(voter, 0) + 1
    return held


def plan(
    shards: Sequence[Copyset],
    live: Collection[str],
    draining: Collection[str],
    busy: Collection[str],
    max_moves: int,
) -> list[Planned]:
    """The moves to start now. ``live``: replicas heard from, ``draining``: to be emptied,
    ``busy``: replicas a move under way already involves."""
    takers = [r for r in live if r not in draining]
    held = counts(shards, [*live, *draining])
    busy_now = set(busy)
    moves: list[Planned] = []

    def start(shard: Copyset, source: str) -> bool:
        options = [r for r in takers if r not in shard.voters and r not in busy_now]
        if not options:
            return False
        target = min(options, key=lambda r: (held[r], r))
        moves.append(Planned(shard.shard, source, target))
        held[source] -= 1
        held[target] += 1
        busy_now.update((source, target))
        return True

    idle = [s for s in shards if not s.moving]
    for source in sorted(draining):
        for shard in idle:
            if len(moves) >= max_moves or source in busy_now:
                break
            if source in shard.voters and start(shard, source):
                idle.remove(shard)
    if any(held[r] for r in draining):
        return moves  # (balancing waits: the drained copies are what fills the others)
    while len(moves) < max_moves and takers:
        free = [r for r in takers if r not in busy_now]
        if not free:
            break
        fullest = max(free, key=lambda r: (held[r], r))
        emptiest = min(free, key=lambda r: (held[r], r))
        if held[fullest] - held[emptiest] < 2:
            break
        candidates = sorted(
            (s for s in idle if fullest in s.voters and emptiest not in s.voters),
            key=lambda s: (s.primary == fullest, s.shard),
        )
        if not candidates:
            busy_now.add(fullest)  # nothing of it can go there: look at the others
            continue
        shard = candidates[0]
        moves.append(Planned(shard.shard, fullest, emptiest))
        held[fullest] -= 1
        held[emptiest] += 1
        busy_now.update((fullest, emptiest))
        idle.remove(shard)
    return moves
