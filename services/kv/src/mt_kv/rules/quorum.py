"""The two majority rules of a primary: when an entry is committed, and until when it may serve
strong reads without asking (its lease)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from mt_kv.rules.breaks import broken

LEASE_SAFETY = 0.9  # serve strong reads for at most 90% of the lease: clock-rate slack


def commit_point(
    commit_seq: int,
    durable_seqs: Iterable[int],
    voters: int,
    epoch: int,
    epoch_at: Callable[[int], int | None],
) -> int:
    """The new commit point, given how far each voter (ourselves included; 0 for a follower
    not heard from) holds our log durably: the highest seq a majority holds — but only an entry
    of our own ``epoch`` commits by counting (Raft §5.4.2: an older epoch's tail commits with
    the first entry of ours after it, never on its own)."""
    held = sorted(durable_seqs, reverse=True)
    majority = 1 if broken("commit_without_majority") else voters // 2 + 1
    if len(held) < majority:
        return commit_seq
    candidate = held[majority - 1]
    if candidate > commit_seq and epoch_at(candidate) == epoch:
        return candidate
    return commit_seq


def lease_until(
    held_until: float, acked_ats: Iterable[float], voters: int, lease_s: float
) -> float:
    """How long strong reads may be served: followers that acknowledged a request promised
    not to help another primary for ``lease_s`` after it was *sent*; with a majority of the
    voters (ourselves and ``voters // 2`` followers) the lease runs from the oldest of the
    needed acknowledgements. It never shrinks."""
    needed = voters // 2  # followers needed beside ourselves
    acks = sorted(acked_ats, reverse=True)
    if not needed or len(acks) < needed:
        return held_until
    if broken("lease_without_quorum"):
        return max(held_until, acks[needed - 1] + lease_s * 10)
    return max(held_until, acks[needed - 1] + lease_s * LEASE_SAFETY)
