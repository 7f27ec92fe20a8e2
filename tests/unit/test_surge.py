"""The surge's load shape follows the public curve, and its check settles what it must."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from surge_check import Truth
from surge_curve import DAY1_PEAK_PER_S, Surge, cumulative_signups, signup_rate_per_s


@pytest.mark.parametrize(
    ("hour", "signups"),
    [(2, 2e6), (4, 5e6), (7, 10e6), (48, 70e6), (120, 100e6), (500, 100e6)],
)
def test_cumulative_signups__passes_through_the_public_points(hour: float, signups: float) -> None:
    assert cumulative_signups(hour) == pytest.approx(signups)


def test_cumulative_signups__about_30m_by_the_end_of_day_one() -> None:
    assert 29e6 <= cumulative_signups(24) <= 32e6


def test_signup_rate__peaks_near_550_per_s_in_hours_7_to_17() -> None:
    assert signup_rate_per_s(10) == pytest.approx(550, rel=0.02)
    assert max(signup_rate_per_s(h / 10) for h in range(1200)) == signup_rate_per_s(10)
    assert signup_rate_per_s(121) == 0


def test_surge__compresses_time_and_scales_people_by_one_factor() -> None:
    surge = Surge(duration_s=180, scale=1e-5, hours=120)
    assert surge.compression == 2400  # one surge second = 40 launch minutes
    assert surge.users_at(0) == 0
    assert surge.users_at(180) == surge.total_users == 1000  # 100M * 1e-5
    assert surge.users_at(180 * 24 / 120) == round(cumulative_signups(24) * 1e-5)
    assert surge.peak_arrivals_per_s == pytest.approx(signup_rate_per_s(10) * 2400 * 1e-5)
    # Arrivals are the derivative of the users alive.
    t = 30.0
    assert surge.users_at(t + 1) - surge.users_at(t) == pytest.approx(
        surge.arrivals_per_s(t + 0.5), abs=1
    )


def test_surge__the_users_alive_never_decrease() -> None:
    surge = Surge(duration_s=60, scale=5e-6)
    counts = [surge.users_at(t / 4) for t in range(0, 241)]
    assert counts == sorted(counts)


def test_day1_goal__is_the_threads_peak_mix() -> None:
    assert DAY1_PEAK_PER_S == {"signups": 550, "posts": 550, "likes": 1100, "feed_reads": 2200}


def _ledger(tmp_path: Path, *entries: dict[str, object]) -> Path:
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def test_truth__unanswered_intents_are_unknown_and_answered_ones_are_not(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path,
        {"kind": "user", "user": "a", "token": "ta", "legacy_id": "1001"},
        {"kind": "like?", "user": "a", "token": "ta", "path": "/v1/posts/p1/like", "post": "p1"},
        {"kind": "like", "user": "a", "post": "p1"},
        {"kind": "like?", "user": "a", "token": "ta", "path": "/v1/posts/p2/like", "post": "p2"},
        {"kind": "post?", "user": "a", "token": "ta", "key": "k1", "body": {"text": "x"}},
        {"kind": "post", "user": "a", "id": "p3", "key": "k1", "reply_to": None},
        {"kind": "post?", "user": "a", "token": "ta", "key": "k2", "body": {"text": "y"}},
        {
            "kind": "follow?",
            "user": "a",
            "token": "ta",
            "path": "/v1/me/following/b",
            "target": "b",
        },
    )
    truth = Truth.read(ledger)
    unknown = truth.unknown()
    assert [(e["kind"], e.get("post") or e.get("key") or e.get("target")) for e in unknown] == [
        ("like?", "p2"),
        ("post?", "k2"),
        ("follow?", "b"),
    ]
    assert truth.likes == {"p1": {"a"}}
    assert truth.posts == {"p3": None}


def test_truth__refused_intents_are_known_not_done(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path,
        {"kind": "post?", "user": "a", "token": "ta", "key": "k1", "body": {"text": "x"}},
        {"kind": "refused", "key": "k1"},
        {"kind": "like?", "user": "a", "token": "ta", "key": "k2", "post": "p1", "path": "/l"},
        {"kind": "refused", "key": "k2"},
        {"kind": "like?", "user": "a", "token": "ta", "key": "k3", "post": "p2", "path": "/l"},
    )
    truth = Truth.read(ledger)
    assert [e["key"] for e in truth.unknown()] == ["k3"]
    assert not truth.likes
    assert not truth.posts
