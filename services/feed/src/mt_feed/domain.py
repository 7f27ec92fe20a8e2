"""The home feed (hybrid fan-out) and notification inboxes.

Layout, keyspace ``feed``, partition = the reader:
- ``i:<post id>`` -> author id: the inbox, filled by fan-out workers (:meth:`Feed.deliver`),
  newest first by a reverse scan, capped at ``inbox_capacity``;
- ``meta``: when the reader last read and was rebuilt, and which followees are celebrities.

A page merges three sources newest first: the inbox, the recent posts of followed celebrities
(never fanned out), and the reader's own posts (so their post is in their next read,
whatever the workers are doing). Post ids sort by time, so a page's cursor is the last id
shown; every source is asked for posts older than it, and pages neither repeat nor skip.
A reader who has been away (or never read) gets their inbox rebuilt from followees' recent
posts before the page is served; reading marks them active, and fan-out writes only to active
readers.

Notifications: ``notifications/<user>/n:<id>`` (a serialized Notification), newest first; a
``d:<dedup key>`` row, claimed atomically with it, makes a repeated event notify once.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import random
from collections.abc import Sequence
from typing import Any

from mt_core.errors import InvalidArgument
from mt_core.ids import now_us, time_of
from mt_core.paging import MAX_INTERNAL_LIMIT, check_batch, decode_cursor, encode_cursor, limit_of
from mt_core.rpc.client import call
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Delete, Put
from mt_proto import common_pb2 as cpb
from mt_proto import counters_pb2 as kpb
from mt_proto import counters_pb2_grpc, graph_pb2_grpc, posts_pb2_grpc
from mt_proto import feed_pb2 as pb
from mt_proto import graph_pb2 as gpb
from mt_proto import posts_pb2 as ppb

from mt_feed.settings import Settings

Item = tuple[str, str]  # (post id, author id)


def _inbox(user: str, post_id: str = "") -> Key:
    return Key("feed", user.encode(), f"i:{post_id}".encode())


def _meta_key(user: str) -> Key:
    return Key("feed", user.encode(), b"meta")


def _check_user(user_id: str) -> None:
    if not user_id or len(user_id) > 64:
        raise InvalidArgument("a user id is required", code="invalid_user_id")


class Feed:
    def __init__(
        self,
        settings: Settings,
        kv: KVClient,
        graph: graph_pb2_grpc.GraphServiceAsyncStub,
        posts: posts_pb2_grpc.PostsServiceAsyncStub,
        counters: counters_pb2_grpc.CountersServiceAsyncStub,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.graph = graph
        self.posts = posts
        self.counters = counters

    # ------------------------------------------------------------------ sources

    async def _followees(self, user: str) -> list[str]:
        found: list[str] = []
        cursor = ""
        while True:
            page = cpb.PageRequest(limit=1000, cursor=cursor)
            reply = await call(
                self.graph.ListFollowing(gpb.ListFollowingRequest(user_id=user, page=page))
            )
            found += [e.user_id for e in reply.items]
            cursor = reply.next_cursor
            if not cursor:
                return found

    async def _timeline(self, author: str, limit: int, before: str = "") -> list[Item]:
        request = ppb.ListUserPostsRequest(
            author_id=author, page=cpb.PageRequest(limit=limit), before_id=before
        )
        reply = await call(self.posts.ListUserPosts(request))
        return [(p.id, p.author_id) for p in reply.items]

    async def _timelines(
        self, authors: Sequence[str], limit: int, before: str = ""
    ) -> list[list[Item]]:
        gate = asyncio.Semaphore(self.settings.timeline_concurrency)

        async def one(author: str) -> list[Item]:
            async with gate:
                return await self._timeline(author, limit, before)

        return list(await asyncio.gather(*(one(a) for a in authors)))

    async def _celebrities(self, authors: Sequence[str]) -> list[str]:
        if not authors:
            return []
        keys = [kpb.CounterKey(kind=kpb.COUNTER_KIND_FOLLOWERS, entity_id=a) for a in authors]
        found: list[str] = []
        for start in range(0, len(keys), MAX_INTERNAL_LIMIT):
            reply = await call(
                self.counters.Get(kpb.GetRequest(keys=keys[start : start + MAX_INTERNAL_LIMIT]))
            )
            found += [
                v.key.entity_id for v in reply.values if v.value > self.settings.celebrity_followers
            ]
        return found

    async def _meta(self, user: str) -> dict[str, Any] | None:
        item = await self.kv.get(_meta_key(user))
        return json.loads(item.value) if item is not None else None

    async def _save_meta(self, user: str, meta: dict[str, Any]) -> None:
        await self.kv.put(_meta_key(user), json.dumps(meta).encode())

    # ------------------------------------------------------------------ read path

    async def get_feed(self, viewer: str, limit: int, cursor: str) -> tuple[list[pb.FeedItem], str]:
        _check_user(viewer)
        size = limit_of(limit)
        position = decode_cursor(cursor)
        before = position.decode(errors="replace") if position else ""
        meta = await self._fresh_meta(viewer)
        scan_cursor = _inbox(viewer, before).key.hex() if before else ""
        rows, _ = await self.kv.scan(
            "feed", viewer.encode(), b"i:", cursor=scan_cursor, limit=size, reverse=True
        )
        inbox = [(r.key.key.decode()[2:], r.value.decode()) for r in rows]
        others = await self._timelines([viewer, *meta["celebrities"]], size, before)
        merged = heapq.merge(inbox, *others, key=lambda item: item[0], reverse=True)
        page: list[Item] = []
        for item in merged:
            if page and page[-1][0] == item[0]:
                continue  # a celebrity's post backfilled into the inbox before they grew
            page.append(item)
            if len(page) == size:
                break
        sources = (inbox, *others)
        # More exist if something fetched was not shown, or a source may hold more than it sent.
        more = sum(map(len, sources)) > len(page) or any(len(s) == size for s in sources)
        items = [pb.FeedItem(post_id=p, author_id=a, created_at_us=time_of(p)) for p, a in page]
        return items, encode_cursor(page[-1][0].encode()) if more and page else ""

    async def _fresh_meta(self, viewer: str) -> dict[str, Any]:
        """The reader's meta, rebuilding the inbox first if they were away; marks them active."""
        now = now_us()
        meta = await self._meta(viewer)
        if meta is None or now - meta["last_read_at_us"] > self.settings.active_window_s * 1e6:
            await self.rebuild(viewer)
            meta = await self._meta(viewer)
            assert meta is not None
            return meta
        changed = False
        if now - meta.get("celebrities_at_us", 0) > self.settings.celebrities_refresh_s * 1e6:
            meta["celebrities"] = await self._celebrities(await self._followees(viewer))
            meta["celebrities_at_us"], changed = now, True
        if now - meta["last_read_at_us"] > 60e6:  # written at most once a minute per reader
            meta["last_read_at_us"], changed = now, True
        if changed:
            await self._save_meta(viewer, meta)
        return meta

    async def rebuild(self, user: str) -> int:
        """Refill ``user``'s inbox from the recent posts of the users they follow."""
        _check_user(user)
        followees = await self._followees(user)
        celebrities = await self._celebrities(followees)
        ordinary = [f for f in followees if f not in set(celebrities)]
        recent = await self._timelines(ordinary, self.settings.backfill_posts)
        newest = heapq.nlargest(self.settings.inbox_capacity, (i for t in recent for i in t))
        await self.kv.multi_put([(_inbox(user, p), a.encode()) for p, a in newest])
        await self._trim(user)
        now = now_us()
        meta = await self._meta(user) or {"last_read_at_us": now}
        meta.update(celebrities=celebrities, celebrities_at_us=now, last_rebuilt_at_us=now)
        meta["last_read_at_us"] = now
        await self._save_meta(user, meta)
        return len(newest)

    async def _trim(self, user: str) -> None:
        """Keep the newest ``inbox_capacity`` entries."""
        rows, cursor = await self.kv.scan(
            "feed", user.encode(), b"i:", limit=self.settings.inbox_capacity, reverse=True
        )
        while cursor:
            rows, cursor = await self.kv.scan(
                "feed", user.encode(), b"i:", cursor=cursor, limit=1000, reverse=True
            )
            await asyncio.gather(*(self.kv.delete(r.key) for r in rows))

    async def inbox_stats(self, user_id: str) -> pb.InboxStats:
        _check_user(user_id)
        meta = await self._meta(user_id) or {}
        size = 0
        async for rows in self.kv.scan_pages("feed", user_id.encode(), b"i:"):
            size += len(rows)
        last_read = int(meta.get("last_read_at_us", 0))
        return pb.InboxStats(
            user_id=user_id,
            size=size,
            capacity=self.settings.inbox_capacity,
            active=bool(last_read) and now_us() - last_read <= self.settings.active_window_s * 1e6,
            last_read_at_us=last_read,
            last_rebuilt_at_us=int(meta.get("last_rebuilt_at_us", 0)),
        )

    # ------------------------------------------------------------------ write path (workers)

    async def deliver(self, item: pb.FeedItem, users: Sequence[str]) -> None:
        check_batch(users)
        await self.kv.multi_put([(_inbox(u, item.post_id), item.author_id.encode()) for u in users])
        # Trim a sample of the inboxes written: each inbox is trimmed every ~32 deliveries,
        # so it stays near its cap without a scan on every write.
        await asyncio.gather(*(self._trim(u) for u in users if random.random() < 1 / 32))

    async def retract(self, post_id: str, users: Sequence[str]) -> None:
        check_batch(users)
        await asyncio.gather(*(self.kv.delete(_inbox(u, post_id)) for u in users))

    async def backfill(self, user: str, author: str) -> int:
        _check_user(user)
        _check_user(author)
        if await self._celebrities([author]):
            meta = await self._meta(user)
            if meta is not None and author not in meta["celebrities"]:
                meta["celebrities"].append(author)
                await self._save_meta(user, meta)
            return 0
        recent = await self._timeline(author, self.settings.backfill_posts)
        await self.kv.multi_put([(_inbox(user, p), a.encode()) for p, a in recent])
        return len(recent)

    async def remove_author(self, user: str, author: str) -> int:
        _check_user(user)
        removed = 0
        async for rows in self.kv.scan_pages("feed", user.encode(), b"i:"):
            mine = [r.key for r in rows if r.value == author.encode()]
            if mine:  # one partition, one shard: one atomic write per page
                await self.kv.write([Delete(k) for k in mine])
            removed += len(mine)
        meta = await self._meta(user)
        if meta is not None and author in meta["celebrities"]:
            meta["celebrities"].remove(author)
            await self._save_meta(user, meta)
        return removed

    async def filter_active(self, users: Sequence[str]) -> list[str]:
        check_batch(users)
        keys = {u: _meta_key(u) for u in dict.fromkeys(users) if u}
        found = await self.kv.multi_get(keys.values())
        horizon = now_us() - self.settings.active_window_s * 1e6
        active = []
        for user, key in keys.items():
            item = found[key]
            if item is not None and json.loads(item.value)["last_read_at_us"] >= horizon:
                active.append(user)
        return active

    # ------------------------------------------------------------------ notifications

    async def add_notifications(
        self, deliveries: list[pb.AddNotificationsRequest.Delivery]
    ) -> None:
        check_batch(deliveries, "notifications")
        await asyncio.gather(*(self._notify(d) for d in deliveries))

    async def _notify(self, d: pb.AddNotificationsRequest.Delivery) -> None:
        n = d.notification
        if (
            not (d.user_id and n.id and n.actor_id and n.type)
            or len(n.id) > 64
            or len(d.dedup_key) > 256
        ):
            raise InvalidArgument(
                "a notification needs user, id, actor and type", code="invalid_notification"
            )
        if n.actor_id == d.user_id:
            return
        row = Put(
            Key("notifications", d.user_id.encode(), f"n:{n.id}".encode()), n.SerializeToString()
        )
        if not d.dedup_key:
            await self.kv.write([row])
            return
        # The dedup row and the notification share the partition: one atomic claim.
        dedup = Key("notifications", d.user_id.encode(), f"d:{d.dedup_key}".encode())
        await self.kv.claim(dedup, n.id.encode(), extra=[row])

    async def notifications(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.Notification], str]:
        _check_user(user_id)
        items, next_cursor = await self.kv.scan(
            "notifications",
            user_id.encode(),
            b"n:",
            cursor=cursor,
            limit=limit_of(limit),
            reverse=True,
        )
        return [pb.Notification.FromString(i.value) for i in items], next_cursor
