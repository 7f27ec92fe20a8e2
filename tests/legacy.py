"""The legacy graph as the tests pick accounts from it (the stack's seed and size: defaults)."""

from __future__ import annotations

import os
import random
from functools import cache
from pathlib import Path

from mt_legacy import LegacyGraph
from mt_legacy.identity import credential, ensure_secret

GRAPH = LegacyGraph()
REPO = Path(__file__).resolve().parent.parent


@cache
def operator_secret() -> bytes:
    return ensure_secret(Path(os.environ.get("MT_HOME", REPO / ".local")))


def legacy_credential(legacy_id: str) -> str:
    """What the legacy account's owner would type at the legacy app (from the operator's
    secret in the stack's ``.local``, as the load generator reads it too)."""
    return credential(operator_secret(), legacy_id)


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
