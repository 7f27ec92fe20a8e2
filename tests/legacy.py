"""The legacy graph as the tests pick accounts from it (the stack's seed and size: defaults)."""

from __future__ import annotations

import random

from mt_legacy import LegacyGraph

GRAPH = LegacyGraph()


def small_followers_of(celebrity: int, wanted: int, max_degree: int = 40) -> list[str]:
    """Distinct legacy accounts with a small following (cheap imports) that includes
    ``celebrity``; fewer than ``wanted`` if a bounded search finds fewer."""
    found: dict[str, None] = {}
    rng = random.Random()
    for _ in range(3_000_000):
        n = rng.randint(1_000, GRAPH.size)  # below that: the celebrities themselves
        if GRAPH.out_degree(n) <= max_degree and celebrity in GRAPH.following(str(n)):
            found[str(n)] = None
            if len(found) == wanted:
                break
    return list(found)
