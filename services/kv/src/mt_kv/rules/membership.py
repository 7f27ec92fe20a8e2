"""Which voter sets a shard may move through: one member added or removed per epoch, and the
next step only from a set known to be established.

Any majority of a set and any majority of a set one member apart share a member (any 3 of
{A,B,C,D} hold 2 of {A,B,C}; any 2 of {B,C,D} meet any 3 of {A,B,C,D}), so what was committed
under one set — and every lease a majority of it promised — is seen by whoever the next set
elects. Two members apart they need not: {A,B,C} → {B,C,D} in one step lets {C,D} elect a primary
that never saw an entry {A,B} committed. Stepping on from a set that was published but never
established (no entry of its epoch committed) is the same hazard in two steps (Ongaro's 2015
correction to single-server changes): {A,B,C} +D, then -A before anything committed under
{A,B,C,D}, is {A,B,C} → {B,C,D}. A set is *established* once its primary applied an entry of its
epoch — the entry every new primary sequences first.

Learners (catching up, counted for nothing) come and go freely.
"""

from __future__ import annotations

from collections.abc import Collection


def differ(a: Collection[str], b: Collection[str]) -> int:
    """How many members are in one set and not the other."""
    return len(set(a) ^ set(b))


def allowed(stable: Collection[str], current: Collection[str], proposed: Collection[str]) -> bool:
    """Whether the voters may become ``proposed``, the last established set being ``stable``
    and the published one ``current`` (equal once it is established): one member apart from
    both, and never fewer than one voter."""
    if not proposed:
        return False
    return differ(proposed, current) <= 1 and differ(proposed, stable) <= 1
