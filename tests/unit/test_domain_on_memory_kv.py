"""The services' domain rules, tested without processes: on MemoryKV, which passes the KV's
contract tests (tests/integration/test_kv_contract.py) just as a real cluster does."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import cast

import pytest
from mt_feed.domain import Feed
from mt_feed.settings import Settings as FeedSettings
from mt_graph.domain import Graph
from mt_jobs import Job, JobProducer, Outbox
from mt_kv_client.memory import MemoryKV
from mt_posts.domain import Posts
from mt_posts.settings import Settings as PostsSettings


@dataclass
class Recorded:
    """A job producer that keeps what it is given (the broker is not the rule under test)."""

    jobs: list[Job] = field(default_factory=list)

    async def enqueue_many(self, jobs: Sequence[Job]) -> None:
        self.jobs.extend(jobs)


@dataclass
class World:
    kv: MemoryKV
    jobs: Recorded
    graph: Graph
    posts: Posts
    feed: Feed


@pytest.fixture
async def world() -> AsyncIterator[World]:
    kv, jobs = MemoryKV(), Recorded()

    def outbox(owner: str) -> Outbox:
        return Outbox(kv, cast(JobProducer, jobs), owner)

    yield World(
        kv,
        jobs,
        Graph(kv, outbox("graph")),
        Posts(PostsSettings(), kv, outbox("posts")),
        Feed(FeedSettings(), kv),
    )
    await asyncio.sleep(0)  # the outboxes' settle tasks end


async def _scroll(feed: Feed, viewer: str, page: int) -> list[str]:
    seen: list[str] = []
    cursor = ""
    while True:
        posts, cursor = await feed.get_feed(viewer, page, cursor)
        seen += [p.id for p in posts]
        if not cursor:
            return seen


async def test_feed__scrolls_past_the_rebuilt_inbox_into_older_posts(world: World) -> None:
    await world.graph.follow("reader", "author")
    made = [(await world.posts.create("author", f"post {n}", None, None)).id for n in range(30)]
    seen = await _scroll(world.feed, "reader", 7)
    assert seen == made[::-1]  # every one, newest first, none twice


async def test_feed__a_delivered_post_is_read_once_among_rebuilt_ones(world: World) -> None:
    await world.graph.follow("reader", "author")
    older = [(await world.posts.create("author", f"old {n}", None, None)).id for n in range(3)]
    assert await _scroll(world.feed, "reader", 10) == older[::-1]  # rebuilt on the first read
    new = await world.posts.create("author", "new", None, None)
    await world.feed.deliver(new.id, "author", ["reader"])
    await world.feed.deliver(new.id, "author", ["reader"])  # a redelivered job
    assert await _scroll(world.feed, "reader", 2) == [new.id, *older[::-1]]


async def test_feed__an_inbox_past_its_capacity_is_trimmed_and_still_scrolls(
    world: World,
) -> None:
    world.feed.settings = FeedSettings(inbox_capacity=10)
    await world.graph.follow("reader", "author")
    await world.feed.get_feed("reader", 5, "")  # reading makes the reader active
    made = []
    for n in range(25):
        post = await world.posts.create("author", f"post {n}", None, None)
        await world.feed.deliver(post.id, "author", ["reader"])
        made.append(post.id)
    stats = await world.feed.inbox_stats("reader")
    assert stats.size <= 10 + 10 // 10
    assert await _scroll(world.feed, "reader", 4) == made[::-1]


async def test_follow__is_idempotent_and_stages_one_job(world: World) -> None:
    assert await world.graph.follow("a", "b")
    assert not await world.graph.follow("a", "b")
    await asyncio.sleep(0.01)  # the outbox publishes in the background
    assert [j.kind for j in world.jobs.jobs] == ["follow"]
