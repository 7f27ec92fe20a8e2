"""What each job kind does. The workers host the owners' own rules (after XFaaS, which runs
product teams' functions): the graph's, the feed's and the posts' domain objects, on a KV
client of the workers' own — a job costs KV round trips, not service calls.

Every handler is idempotent: a job may arrive twice (at-least-once), late, or out of order with
its successors. A job from the outbox is a fact — the write it announces happened — and each
effect is made conditional on what is there now, not on what the job said.

- ``fanout``: a new post goes into the inboxes of its author's active followers (authors
  above the celebrity threshold are skipped: the feed merges their posts at read time); a
  deleted post comes out of them. A reply's link under its parent is made again if a crash
  cut it off.
- ``follow``: a follow or unfollow is mirrored on the followee's side; a follow that still
  holds backfills the follower's inbox and notifies the followee; an unfollow that still holds
  takes the followee's posts out of the inbox.
- ``notify``: like and reply notifications, batched.
- ``import``: one batch of a legacy graph copy per job, then the next job, until done.
- ``join``: a legacy account joined: apply the follows imports left pending for it, a batch
  per job (a celebrity's join is a long chain of them, throttled by the capacity controller).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from mt_core.errors import NotFound, Overloaded
from mt_core.ids import time_of
from mt_feed.domain import Feed
from mt_graph.domain import Graph
from mt_graph.imports import Legacy
from mt_jobs import Job, JobProducer
from mt_kv_client import KV
from mt_posts.domain import Posts
from mt_proto import feed_pb2 as fpb
from mt_schema.graph import listed_user
from mt_schema.posts import decode, record_key
from mt_schema.users import legacy_key

from mt_workers.settings import Settings

log = logging.getLogger(__name__)

_TYPES = {
    "follow": fpb.NOTIFICATION_TYPE_FOLLOW,
    "like": fpb.NOTIFICATION_TYPE_LIKE,
    "reply": fpb.NOTIFICATION_TYPE_REPLY,
}
Note = tuple[str, str, str, str | None, int, str]  # user, type, actor, post, at µs, dedup


def _notification_id(at_us: int, dedup: str) -> str:
    return f"{at_us:016x}{hashlib.blake2b(dedup.encode(), digest_size=4).hexdigest()}"


def deliveries(notes: Iterable[Note]) -> list[fpb.Delivery]:
    out = []
    for user_id, type_, actor, post_id, at_us, dedup in notes:
        note = fpb.Notification(
            id=_notification_id(at_us, dedup),
            type=_TYPES[type_],
            actor_id=actor,
            created_at_us=at_us,
        )
        if post_id:
            note.post_id = post_id
        out.append(fpb.Delivery(user_id=user_id, notification=note, dedup_key=dedup))
    return out


MIN_JOIN_BATCH = 10


def join_batch(payload: dict[str, Any], attempt: int, most: int) -> int:
    """The pending follows one join step applies: what the chain's last step found to fit
    (``batch`` in the payload), halved per failed attempt. Under load a large batch may not
    fit in a step's budget, and a chain that starts every step at the largest again spends its
    time on steps cut short. Every step is idempotent, so a partial one costs nothing."""
    batch = int(payload.get("batch", most))
    return max(MIN_JOIN_BATCH, min(most, batch) >> min(attempt, 8))


def next_join_batch(batch: int, took_ms: float, budget_ms: int, most: int) -> int:
    """Grow while a step takes under a quarter of the budget, shrink past a half."""
    if took_ms < budget_ms / 4:
        return min(most, batch * 2)
    if took_ms > budget_ms / 2:
        return max(MIN_JOIN_BATCH, batch // 2)
    return batch


class Handlers:
    def __init__(
        self,
        settings: Settings,
        kv: KV,
        producer: JobProducer,
        graph: Graph,
        legacy: Legacy,
        feed: Feed,
        posts: Posts,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.producer = producer
        self.graph = graph
        self.legacy = legacy
        self.feed = feed
        self.posts = posts

    def table(self) -> dict[str, Callable[[list[Job]], Awaitable[int | None]]]:
        return {
            "fanout": self.guarded(self.each(self.fanout)),
            "follow": self.guarded(self.follow),
            "notify": self.guarded(self.notify),
            "import": self.guarded(self.each(self.import_step)),
            "join": self.guarded(self.each(self.join_step)),
        }

    def guarded(
        self, run: Callable[[list[Job]], Awaitable[int | None]]
    ) -> Callable[[list[Job]], Awaitable[int | None]]:
        """A batch starts only while the KV's commits keep their target: past it, the batch
        is refused as ``overloaded`` — back-pressure to the job platform, which slows the kind
        down and retries the batch without counting it against its attempts."""

        async def guard(jobs: list[Job]) -> int | None:
            if self.kv.commit_pressure(self.settings.kv_commit_target_ms)() > 1:
                raise Overloaded("the KV's commits are past their target", code="overloaded")
            return await run(jobs)

        return guard

    @staticmethod
    def each(
        one: Callable[[Job], Awaitable[int | None]],
    ) -> Callable[[list[Job]], Awaitable[int | None]]:
        """A batch handler running ``one`` per job; the units are theirs summed (a job that
        reports none counts one)."""

        async def run(jobs: list[Job]) -> int:
            units = await asyncio.gather(*(one(job) for job in jobs))
            return sum(1 if u is None else u for u in units)

        return run

    # ------------------------------------------------------------------ fan-out

    async def fanout(self, job: Job) -> None:
        p = job.payload
        post_id, author = p["post_id"], p["author_id"]
        if p["op"] == "add":
            found = await self.kv.get(record_key(post_id))
            if found is None:
                return  # deleted already: its removal job takes it out of the inboxes
            record = decode(found.value)
            if record.get("reply_to"):
                await self.posts.link_reply(record)
        if await self.feed.celebrities([author]):
            return  # merged at read time by the feed
        async for rows in self.kv.scan_pages(
            "graph", author.encode(), b"i:", page_size=self.settings.followers_page
        ):
            followers = [listed_user(r.key.key, "i:")[0] for r in rows]
            if p["op"] == "add":
                active = await self.feed.filter_active(followers)
                if active:
                    await self.feed.deliver(post_id, author, active)
            else:
                await self.feed.retract(post_id, followers)

    # ------------------------------------------------------------------ follows

    async def follow(self, jobs: list[Job]) -> int:
        """A batch of follow events: the followees' mirrors first (one write per followee for
        all its followers in the batch), then each edge as it is now decides the follower's
        inbox and the notification."""
        by_followee: dict[str, list[str]] = defaultdict(list)
        for job in jobs:
            by_followee[job.payload["followee"]].append(job.payload["follower"])
        mirrored = await asyncio.gather(
            *(self.graph.sync_followers(e, f) for e, f in by_followee.items())
        )
        edges = dict(zip(by_followee, mirrored, strict=True))  # followee -> follower -> time
        notes: list[Note] = []
        work = []
        for job in jobs:
            p = job.payload
            follower, followee = p["follower"], p["followee"]
            held = edges[followee].get(follower)
            if p["op"] == "follow" and held == p["at_us"]:
                work.append(self.feed.backfill(follower, followee))
                notes.append((followee, "follow", follower, None, p["at_us"], f"follow:{follower}"))
            elif p["op"] == "unfollow" and held is None:
                work.append(self.feed.remove_author(follower, followee))
        await asyncio.gather(*work)
        await self.feed.add_notifications(deliveries(notes))
        return len(jobs)

    # ------------------------------------------------------------------ notifications

    async def notify(self, jobs: list[Job]) -> int:
        notes: list[Note] = [
            (
                j.payload["user_id"],
                j.payload["type"],
                j.payload["actor_id"],
                j.payload.get("post_id"),
                j.payload["at_us"],
                j.payload["dedup"],
            )
            for j in jobs
        ]
        await self.feed.add_notifications(deliveries(notes))
        return len(jobs)

    # ------------------------------------------------------------------ imports and joins

    async def import_step(self, job: Job) -> int:
        """One batch of the copy; its units are the legacy followees it went through."""
        p = job.payload
        try:
            step = await self.legacy.import_step(p["user_id"], p["import_id"])
        except NotFound:
            return 0  # the import was never recorded
        if step is None:
            return 0
        user = p["user_id"]
        await self.feed.backfill_many([user], step.followees)
        at_us = time_of(job.id)
        notes = [(f, "follow", user, None, at_us, f"follow:{user}") for f in step.followees]
        await self.feed.add_notifications(deliveries(notes))
        saved = await self.legacy.save(step)
        if step.record["state"] not in ("done", "failed"):
            following = {**p, "done": saved.done}
            await self.producer.enqueue(
                Job("import", following, key=job.key, deadline_ms=job.deadline_ms)
            )
        return max(0, saved.done - int(p.get("done", 0)))

    async def join_step(self, job: Job) -> int:
        """One batch of a join's pending follows; its units are the follows applied."""
        p = job.payload
        link = await self.kv.get(legacy_key(p["legacy_id"]))
        if link is None or link.value.decode() != p["user_id"]:
            return 0  # the signup that announced this join lost its legacy claim
        followee = p["user_id"]
        batch = join_batch(p, job.attempt, self.settings.join_batch)
        started = asyncio.get_running_loop().time()
        rows, more = await self.legacy.pending(p["legacy_id"], batch)
        followers = await self.legacy.apply_pending(followee, rows)
        await self.feed.backfill_many(followers, [followee])
        at_us = time_of(job.id)
        notes = [(followee, "follow", f, None, at_us, f"follow:{f}") for f in followers]
        await self.feed.add_notifications(deliveries(notes))
        await self.legacy.forget_pending(rows)
        if more:
            took_ms = (asyncio.get_running_loop().time() - started) * 1000
            budget = self.settings.default_rpc_timeout_ms
            following = {
                **p,
                "batch": next_join_batch(batch, took_ms, budget, self.settings.join_batch),
            }
            await self.producer.enqueue(
                Job("join", following, key=job.key, deadline_ms=job.deadline_ms)
            )
        return len(followers)
