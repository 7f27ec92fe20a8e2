"""What each job kind does. Every handler is idempotent and checks the state it acts on:
a job may arrive twice (at-least-once), late, or announce a write that never happened (the
outbox records intents before the write).

- ``fanout``: a new post goes into the inboxes of its author's active followers (authors
  above the celebrity threshold are skipped: the feed merges their posts at read time); a
  deleted post comes out of them.
- ``follow``: a follow backfills the follower's inbox with the followee's recent posts and
  notifies the followee; an unfollow removes the followee's posts from the inbox.
- ``notify``: like and reply notifications, if the like still exists / the reply was posted.
- ``import``: one batch of a legacy graph copy per job, then the next job, until done.
- ``join``: a legacy account joined: apply the follows imports left pending for it, a batch
  per job (a celebrity's join is a long chain of them, throttled by the AIMD limiter).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mt_core.errors import NotFound
from mt_core.rpc.client import call
from mt_core.rpc.services import Services
from mt_jobs import Job, JobProducer
from mt_proto import common_pb2 as cpb
from mt_proto import counters_pb2 as kpb
from mt_proto import feed_pb2 as fpb
from mt_proto import graph_pb2 as gpb
from mt_proto import posts_pb2 as ppb
from mt_proto import users_pb2 as upb

from mt_workers.settings import Settings

log = logging.getLogger(__name__)

_TYPES = {
    "follow": fpb.NOTIFICATION_TYPE_FOLLOW,
    "like": fpb.NOTIFICATION_TYPE_LIKE,
    "reply": fpb.NOTIFICATION_TYPE_REPLY,
}


def _notification_id(at_us: int, dedup: str) -> str:
    return f"{at_us:016x}{hashlib.blake2b(dedup.encode(), digest_size=4).hexdigest()}"


MIN_JOIN_BATCH = 10


def join_batch(payload: dict[str, Any], attempt: int, most: int) -> int:
    """The pending follows one join step applies: what the chain's last step found to fit
    (``batch`` in the payload), halved per failed attempt. Under load 200 follows may not fit
    in one call's deadline, and a chain that starts every step at 200 again spends half its
    time on steps cut short. Every step is idempotent, so a partial one costs nothing."""
    batch = int(payload.get("batch", most))
    return max(MIN_JOIN_BATCH, min(most, batch) >> min(attempt, 8))


def next_join_batch(batch: int, took_ms: float, deadline_ms: int, most: int) -> int:
    """Grow while a step takes under a quarter of the deadline, shrink past a half."""
    if took_ms < deadline_ms / 4:
        return min(most, batch * 2)
    if took_ms > deadline_ms / 2:
        return max(MIN_JOIN_BATCH, batch // 2)
    return batch


class Handlers:
    def __init__(self, settings: Settings, b: Services, producer: JobProducer) -> None:
        self.settings = settings
        self.b = b
        self.producer = producer

    def table(self) -> dict[str, Callable[[list[Job]], Awaitable[int | None]]]:
        return {
            "fanout": self.each(self.fanout),
            "follow": self.each(self.follow),
            "notify": self.notify,
            "import": self.each(self.import_step),
            "join": self.each(self.join_step),
        }

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

    async def _followers(self, user_id: str) -> Any:
        cursor = ""
        while True:
            page = cpb.PageRequest(limit=self.settings.followers_page, cursor=cursor)
            reply = await call(
                self.b.graph.ListFollowers(gpb.ListFollowersRequest(user_id=user_id, page=page))
            )
            yield [e.user_id for e in reply.items]
            cursor = reply.next_cursor
            if not cursor:
                return

    async def _is_celebrity(self, user_id: str) -> bool:
        key = kpb.CounterKey(kind=kpb.COUNTER_KIND_FOLLOWERS, entity_id=user_id)
        reply = await call(self.b.counters.Get(kpb.GetRequest(keys=[key])))
        return reply.values[0].value > self.settings.celebrity_followers

    async def fanout(self, job: Job) -> None:
        p = job.payload
        item = fpb.FeedItem(
            post_id=p["post_id"], author_id=p["author_id"], created_at_us=p["created_at_us"]
        )
        if await self._is_celebrity(item.author_id):
            return  # merged at read time by the feed
        if p["op"] == "add":
            try:
                await call(self.b.posts.GetPost(ppb.GetPostRequest(post_id=item.post_id)))
            except NotFound:
                return  # never published, or already deleted
            async for page in self._followers(item.author_id):
                active = await call(
                    self.b.feed.FilterActive(fpb.FilterActiveRequest(user_ids=page))
                )
                if active.user_ids:
                    await call(
                        self.b.feed.Deliver(fpb.DeliverRequest(item=item, user_ids=active.user_ids))
                    )
        else:
            async for page in self._followers(item.author_id):
                await call(
                    self.b.feed.Retract(fpb.RetractRequest(post_id=item.post_id, user_ids=page))
                )

    # ------------------------------------------------------------------ follows

    async def _follows(self, follower: str, followee: str) -> bool:
        reply = await call(
            self.b.graph.IsFollowing(
                gpb.IsFollowingRequest(viewer_id=follower, target_ids=[followee])
            )
        )
        return followee in reply.following_ids

    async def follow(self, job: Job) -> None:
        p = job.payload
        follower, followee = p["follower"], p["followee"]
        following = await self._follows(follower, followee)
        if p["op"] == "follow" and following:
            await call(
                self.b.feed.Backfill(fpb.BackfillRequest(user_id=follower, author_id=followee))
            )
            await self._deliver(
                [(followee, "follow", follower, None, p["at_us"], f"follow:{follower}")]
            )
        elif p["op"] == "unfollow" and not following:
            await call(
                self.b.feed.RemoveAuthor(
                    fpb.RemoveAuthorRequest(user_id=follower, author_id=followee)
                )
            )

    # ------------------------------------------------------------------ notifications

    async def notify(self, jobs: list[Job]) -> None:
        checks = await asyncio.gather(*(self._still_true(job) for job in jobs))
        await self._deliver(
            [
                (
                    j.payload["user_id"],
                    j.payload["type"],
                    j.payload["actor_id"],
                    j.payload.get("post_id"),
                    j.payload["at_us"],
                    j.payload["dedup"],
                )
                for j, ok in zip(jobs, checks, strict=True)
                if ok
            ]
        )

    async def _still_true(self, job: Job) -> bool:
        p = job.payload
        if p["type"] == "like":
            reply = await call(
                self.b.posts.BatchGetLiked(
                    ppb.BatchGetLikedRequest(user_id=p["actor_id"], post_ids=[p["post_id"]])
                )
            )
            return p["post_id"] in reply.liked_post_ids
        if p["type"] == "reply":
            try:
                await call(self.b.posts.GetPost(ppb.GetPostRequest(post_id=p["post_id"])))
            except NotFound:
                return False
            return True
        return await self._follows(p["actor_id"], p["user_id"])

    async def _deliver(self, notes: list[tuple[str, str, str, str | None, int, str]]) -> None:
        if not notes:
            return
        deliveries = []
        for user_id, type_, actor, post_id, at_us, dedup in notes:
            note = fpb.Notification(
                id=_notification_id(at_us, dedup),
                type=_TYPES[type_],
                actor_id=actor,
                created_at_us=at_us,
            )
            if post_id:
                note.post_id = post_id
            deliveries.append(
                fpb.AddNotificationsRequest.Delivery(
                    user_id=user_id, notification=note, dedup_key=dedup
                )
            )
        await call(self.b.feed.AddNotifications(fpb.AddNotificationsRequest(deliveries=deliveries)))

    # ------------------------------------------------------------------ imports and joins

    async def import_step(self, job: Job) -> int:
        """One batch of the copy; its units are the legacy followees it went through."""
        p = job.payload
        try:
            state = await call(
                self.b.graph.ImportStep(
                    gpb.ImportStepRequest(user_id=p["user_id"], import_id=p["import_id"])
                )
            )
        except NotFound:
            return 0  # the import was never recorded (its intent outlived a failed start)
        if state.state not in (gpb.IMPORT_STATE_DONE, gpb.IMPORT_STATE_FAILED):
            following = {**p, "done": state.done}
            await self.producer.enqueue(
                Job("import", following, key=job.key, deadline_ms=job.deadline_ms)
            )
        return max(0, state.done - int(p.get("done", 0)))

    async def join_step(self, job: Job) -> int:
        """One batch of a join's pending follows; its units are the follows applied."""
        p = job.payload
        try:
            user = await call(
                self.b.users.GetUserByLegacyId(
                    upb.GetUserByLegacyIdRequest(legacy_id=p["legacy_id"])
                )
            )
        except NotFound:
            return 0
        if user.id != p["user_id"]:
            return 0  # the signup that announced this join lost its legacy claim
        batch = join_batch(p, job.attempt, self.settings.join_batch)
        started = asyncio.get_running_loop().time()
        reply = await call(
            self.b.graph.ApplyPendingFollows(
                gpb.ApplyPendingFollowsRequest(
                    legacy_id=p["legacy_id"], followee_id=user.id, limit=batch
                )
            )
        )
        if reply.more:
            took_ms = (asyncio.get_running_loop().time() - started) * 1000
            following = {
                **p,
                "batch": next_join_batch(
                    batch, took_ms, self.settings.default_rpc_timeout_ms, self.settings.join_batch
                ),
            }
            await self.producer.enqueue(
                Job("join", following, key=job.key, deadline_ms=job.deadline_ms)
            )
        return reply.applied
