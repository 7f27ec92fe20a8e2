"""The home feed read path, and notification inboxes.

Home feed (for now, pull): the viewer's own timeline merged with the timelines of everyone
they follow, newest first. Post ids sort by time, so a page's cursor is the last post id
shown and the next page asks every timeline for posts older than it: pages neither repeat nor
skip, however many posts arrive in between. Reads are strong (the KV primary), so the viewer's
own post shows on the next read. Fan-out inboxes replace the per-read merge for ordinary
authors once the async platform fills them (issue 5); celebrity timelines stay merged here.

Notifications: ``notifications/<user>/<notification id>`` (a serialized Notification), written
idempotently by id and listed newest first.
"""

from __future__ import annotations

import asyncio
import heapq

from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_core.paging import decode_cursor, encode_cursor, limit_of
from mt_core.rpc.client import call
from mt_kv_client import Key, KVClient
from mt_proto import common_pb2 as cpb
from mt_proto import feed_pb2 as pb
from mt_proto import graph_pb2 as gpb
from mt_proto import graph_pb2_grpc, posts_pb2_grpc
from mt_proto import posts_pb2 as ppb

from mt_feed.settings import Settings

MAX_DELIVERIES = 1000


class Feed:
    def __init__(
        self,
        settings: Settings,
        kv: KVClient,
        graph: graph_pb2_grpc.GraphServiceAsyncStub,
        posts: posts_pb2_grpc.PostsServiceAsyncStub,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.graph = graph
        self.posts = posts

    async def _followees(self, viewer: str) -> list[str]:
        found: list[str] = []
        cursor = ""
        while True:
            reply = await call(
                self.graph.ListFollowing(
                    gpb.ListFollowingRequest(
                        user_id=viewer, page=cpb.PageRequest(limit=1000, cursor=cursor)
                    )
                )
            )
            found += [e.user_id for e in reply.items]
            cursor = reply.next_cursor
            if not cursor:
                return found

    async def get_feed(self, viewer: str, limit: int, cursor: str) -> tuple[list[pb.FeedItem], str]:
        if not viewer:
            raise InvalidArgument("a viewer is required", code="invalid_user_id")
        size = limit_of(limit)
        position = decode_cursor(cursor)
        before = position.decode(errors="replace") if position else ""
        authors = [viewer, *await self._followees(viewer)]
        gate = asyncio.Semaphore(self.settings.timeline_concurrency)

        async def timeline(author: str) -> list[ppb.Post]:
            async with gate:
                reply = await call(
                    self.posts.ListUserPosts(
                        ppb.ListUserPostsRequest(
                            author_id=author, page=cpb.PageRequest(limit=size), before_id=before
                        )
                    )
                )
                return list(reply.items)

        timelines = await asyncio.gather(*(timeline(a) for a in authors))
        merged = heapq.merge(*timelines, key=lambda p: p.id, reverse=True)
        page = [p for _, p in zip(range(size), merged, strict=False)]
        # More exist if something fetched was not shown, or a timeline may hold more than it sent.
        more = sum(map(len, timelines)) > len(page) or any(len(t) == size for t in timelines)
        items = [
            pb.FeedItem(post_id=p.id, author_id=p.author_id, created_at_us=p.created_at_us)
            for p in page
        ]
        return items, encode_cursor(page[-1].id.encode()) if more and page else ""

    async def add_notifications(
        self, deliveries: list[pb.AddNotificationsRequest.Delivery]
    ) -> None:
        if len(deliveries) > MAX_DELIVERIES:
            raise InvalidArgument(f"at most {MAX_DELIVERIES} per call", code="too_many_ids")
        rows = []
        for d in deliveries:
            n = d.notification
            if not (d.user_id and n.id and n.actor_id and n.type) or len(n.id) > 64:
                raise InvalidArgument(
                    "a notification needs user, id, actor and type", code="invalid_notification"
                )
            if n.actor_id != d.user_id:
                rows.append(
                    (Key("notifications", d.user_id.encode(), n.id.encode()), n.SerializeToString())
                )
        await self.kv.multi_put(rows)

    async def notifications(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.Notification], str]:
        if not user_id:
            raise InvalidArgument("a user is required", code="invalid_user_id")
        items, next_cursor = await self.kv.scan(
            "notifications", user_id.encode(), cursor=cursor, limit=limit_of(limit), reverse=True
        )
        return [pb.Notification.FromString(i.value) for i in items], next_cursor

    async def inbox_stats(self, user_id: str) -> pb.InboxStats:
        raise FailedPrecondition(
            "inboxes are filled by the async platform, which is not deployed yet", code="no_inboxes"
        )
