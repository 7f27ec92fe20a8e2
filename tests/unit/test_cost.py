"""The arithmetic of ``make cost`` (loadtest/cost.py): what it subtracts and whom it picks."""

from __future__ import annotations

import json
import random

import cost


def test_phase__per_action_cost_subtracts_each_process_idle_burn() -> None:
    phase = cost.Phase("like", 100, 10.0, {"posts": 600.0, "kv-1": 250.0})
    phase.idle_ms_per_s = {"posts": 10.0, "kv-1": 5.0}
    assert phase.per_action_ms == {"posts": 5.0, "kv-1": 2.0}
    assert phase.total_ms == 7.0


def test_seed__a_poster_has_its_followers_half_of_them_active() -> None:
    plan = cost.Plan(users=1000, posters=10, followers=100, posts_each=1, seed=1)
    active = set(range(0, 1000, 2))
    followers = cost._followers_of(3, plan, active, random.Random(1))
    assert len(followers) == 100
    assert 3 not in followers
    assert sum(1 for f in followers if f in active) == 50


def test_actions__a_like_or_follow_is_never_one_already_made() -> None:
    world = cost.World([f"u{i}" for i in range(5)], [f"t{i}" for i in range(5)], [0], ["p1", "p2"])
    actions = cost.Actions(world, cost.Plan(5, 2, 2, 1, 1), seed=7, tag="x", secret=b"s")
    for i in range(10):
        actions.like(_Recorder(), i)
    assert len(world.likes) == 10  # every (liker, post) pair once
    for i in range(15):
        actions.follow(_Recorder(), i)
    assert len(world.follows) == 15


class _Recorder(cost.Driver):
    def __init__(self) -> None:
        super().__init__(None, 1)  # type: ignore[arg-type]

    def call(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        return None


def test_world__keeps_its_likes_and_follows_for_the_next_run_on_the_same_data() -> None:
    world = cost.World(["u0", "u1"], ["t0", "t1"], [0], ["p1"], {(0, 1)}, {(1, "p1")})
    again = cost.World.from_json(json.loads(json.dumps(world.as_json())))
    assert again.likes == {(1, "p1")}
    assert again.follows == {(0, 1)}
