"""The synthetic legacy ("Instagram") graph: a million accounts that cost no storage.

Account ``n`` (1..size) has legacy id ``str(n)``; smaller numbers are more popular. Whom an
account follows is computed on demand from ``(seed, n)`` alone, so every process (users for the
default handle, graph for imports and lists, load tests for their own picks) sees the same
graph without sharing a byte:

- out-degree: log-normal, median ~120, mean in the low hundreds, capped at ``max_out_degree``;
- each followee is, with probability ``celebrity_share``, drawn from a Zipf-like law over
  popularity ranks (P(rank r) ~ 1/r, so the top accounts gather hundreds of thousands of
  followers) and otherwise uniformly — everyone also follows a long tail.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache

from mt_core.errors import NotFound

_SYLLABLES = "ka ri mo sa lu ne ta vi zo pe li an to mi ra el no su ya be da fi go ha ju ko ma ni"


@dataclass(frozen=True)
class LegacyAccount:
    legacy_id: str
    handle: str
    following_count: int


class LegacyGraph:
    def __init__(
        self,
        seed: int = 2023,
        size: int = 1_000_000,
        *,
        celebrity_share: float = 0.05,
        median_out_degree: int = 120,
        max_out_degree: int = 2_000,
    ) -> None:
        self.seed = seed
        self.size = size
        self.celebrity_share = celebrity_share
        self._mu = math.log(median_out_degree)
        self._max_degree = max_out_degree
        # Cached per instance: an import and the pages of a list reread the same accounts.
        self._following = lru_cache(maxsize=4096)(self._compute_following)

    def number(self, legacy_id: str) -> int:
        """The account number of ``legacy_id``; NotFound if no such legacy account."""
        if not legacy_id.isdigit() or legacy_id.startswith("0") or int(legacy_id) > self.size:
            raise NotFound(f"no legacy account {legacy_id!r}", code="legacy_not_found")
        return int(legacy_id)

    def handle(self, n: int) -> str:
        rng = random.Random(f"{self.seed}:handle:{n}")
        syllables = _SYLLABLES.split()
        stem = "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3)))
        return f"{stem}{n}"  # the number keeps handles unique; the stem keeps them readable

    def account(self, legacy_id: str) -> LegacyAccount:
        n = self.number(legacy_id)
        return LegacyAccount(legacy_id, self.handle(n), len(self.following(legacy_id)))

    def out_degree(self, n: int) -> int:
        rng = random.Random(f"{self.seed}:degree:{n}")
        return max(1, min(self._max_degree, int(rng.lognormvariate(self._mu, 0.8))))

    def following(self, legacy_id: str) -> tuple[int, ...]:
        """Account numbers ``legacy_id`` follows, in the graph's stable order."""
        return self._following(self.number(legacy_id))

    def _compute_following(self, n: int) -> tuple[int, ...]:
        rng = random.Random(f"{self.seed}:follows:{n}")
        wanted = min(self.out_degree(n), self.size - 1)
        chosen: dict[int, None] = {}
        log_size = math.log(self.size)
        while len(chosen) < wanted:
            if rng.random() < self.celebrity_share:
                # Log-uniform rank: P(rank <= r) = ln r / ln size, i.e. P(r) ~ 1/r.
                target = min(self.size, int(math.exp(rng.random() * log_size)))
            else:
                target = rng.randint(1, self.size)
            if target != n:
                chosen[target] = None
        return tuple(chosen)
