"""The synthetic legacy graph: deterministic, power-law popular, out-degree in the low hundreds."""

from __future__ import annotations

from collections import Counter

import pytest
from mt_core.errors import NotFound
from mt_legacy import LegacyGraph


def test_legacy_graph__is_the_same_in_every_process() -> None:
    a, b = LegacyGraph(seed=7), LegacyGraph(seed=7)
    assert a.following("1234") == b.following("1234")
    assert a.handle(1234) == b.handle(1234)
    assert LegacyGraph(seed=8).following("1234") != a.following("1234")


def test_legacy_graph__following_has_no_self_and_no_duplicates() -> None:
    graph = LegacyGraph()
    for n in (1, 2, 500, 999_999):
        follows = graph.following(str(n))
        assert n not in follows
        assert len(set(follows)) == len(follows)
        assert all(1 <= f <= graph.size for f in follows)


def test_legacy_graph__out_degree_is_in_the_low_hundreds_on_average() -> None:
    graph = LegacyGraph()
    degrees = [len(graph.following(str(n))) for n in range(1, 1001)]
    assert 100 <= sum(degrees) / len(degrees) <= 300
    assert max(degrees) <= 2_000


def test_legacy_graph__popularity_is_power_law_with_celebrities() -> None:
    graph = LegacyGraph()
    followers = Counter(f for n in range(1, 3001) for f in graph.following(str(n)))
    # The top account is followed by a large share of everyone; rank 100 by far fewer.
    assert followers[1] > 0.15 * 3000
    assert followers[1] > 10 * followers[100]
    assert followers[10] > followers[1000]


@pytest.mark.parametrize("bad", ["0", "", "abc", "-5", "01", "1000001"])
def test_legacy_graph__unknown_ids_are_not_found(bad: str) -> None:
    with pytest.raises(NotFound):
        LegacyGraph().account(bad)
