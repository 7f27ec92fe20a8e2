"""The home feed (hybrid fan-out) and notification inboxes (layout: :mod:`mt_schema.feed`).

Each reader has an inbox (``i:<post id>`` -> author id), filled by fan-out (:meth:`Feed.deliver`,
run by the workers), newest first by a reverse scan, and a ``meta`` row: when the reader last
read and was rebuilt, and which followees are celebrities. ``#i`` counts the inbox's rows, each
row written or deleted with it, conditional on that row: so a delivery knows the inbox's size,
and one that takes it a tenth past ``inbox_capacity`` trims the oldest rows back to it — a
scan of the few rows over, not of the 800 kept. (A redelivered post is counted twice — a
delivery is one unconditional write, merged with the others bound for its shard — so a trim
may leave an inbox a row short of its capacity.)

A page merges three sources newest first: the inbox, the recent posts of followed celebrities
(never fanned out), and the reader's own posts (so their post is in their next read, whatever
the workers are doing). Post ids sort by time, so a page's cursor is the last id shown; every
source is asked for posts older than it, and pages neither repeat nor skip. The page comes
hydrated (:mod:`mt_schema.views`): the timelines' scans return their records, and everything
else is one batched read. A reader who has been away (or never read) gets their inbox rebuilt
from followees' recent posts before the page is served; reading marks them active, and fan-out
writes only to active readers.

Notifications: ``notifications/<user>/n:<id>`` (a serialized Notification), newest first; a
``d:<dedup key>`` row, claimed atomically with it, makes a repeated event notify once.
"""

from __future__ import annotations

import asyncio
import heapq
import json
from collections.abc import Callable, Sequence
from typing import Any

from mt_core.errors import InvalidArgument, Unavailable
from mt_core.ids import now_us
from mt_core.paging import decode_cursor, encode_cursor, limit_of
from mt_kv_client import KV, ConditionFailed, Key
from mt_kv_client.client import Check, Delete, Increment, Mutation, Put
from mt_proto import feed_pb2 as pb
from mt_proto import posts_pb2 as ppb
from mt_proto import users_pb2 as upb
from mt_schema import graph, views
from mt_schema.feed import (
    active_key,
    dedup_key,
    inbox_key,
    inbox_size,
    meta_key,
    notification_key,
)
from mt_schema.views import Record

from mt_feed.settings import Settings

Item = tuple[str, str]  # (post id, author id)
ROWS_PER_WRITE = 300  # inbox rows per write (a put and a check each, of 1,000)
CONTENDED = 8  # attempts of a conditional inbox write that races others
NOTES_PER_WRITE = 300  # a notification, its dedup row and its check each, of 1,000


def _check_delivery(d: pb.Delivery) -> None:
    n = d.notification
    if not (d.user_id and n.id and n.actor_id and n.type) or len(n.id) > 64:
        raise InvalidArgument(
            "a notification needs user, id, actor and type", code="invalid_notification"
        )
    if len(d.dedup_key) > 256:
        raise InvalidArgument("a dedup key is at most 256 characters", code="invalid_notification")


def _check_user(user_id: str) -> None:
    if not user_id or len(user_id) > 64:
        raise InvalidArgument("a user id is required", code="invalid_user_id")


class Feed:
    def __init__(self, settings: Settings, kv: KV) -> None:
        self.settings = settings
        self.kv = kv

    # ------------------------------------------------------------------ sources

    async def _timelines(
        self, authors: Sequence[str], limit: int, before: str = ""
    ) -> list[list[Record]]:
        gate = asyncio.Semaphore(self.settings.timeline_concurrency)

        async def one(author: str) -> list[Record]:
            async with gate:
                return await views.timeline(self.kv, author, limit, before)

        return list(await asyncio.gather(*(one(a) for a in authors)))

    async def celebrities(self, authors: Sequence[str]) -> list[str]:
        """Those of ``authors`` with more followers than fan-out serves."""
        keys = [graph.followers_count(a) for a in dict.fromkeys(authors)]
        found = await self.kv.multi_get(keys)
        threshold = self.settings.celebrity_followers
        return [k.partition.decode() for k in keys if views.count(found[k]) > threshold]

    async def _meta(self, user: str) -> dict[str, Any] | None:
        item = await self.kv.get(meta_key(user))
        return json.loads(item.value) if item is not None else None

    async def _update_meta(
        self, user: str, change: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> dict[str, Any] | None:
        """Read-modify-write of the reader's meta, conditional on its version (the read path,
        the workers' backfills and trims all change it): ``change`` gets the meta (None: none
        yet) and returns the new one, or None to leave it. Returns the meta as it is now."""
        key = meta_key(user)
        for _ in range(CONTENDED):
            item = await self.kv.get(key)
            meta = json.loads(item.value) if item is not None else None
            new = change(None if meta is None else dict(meta))
            if new is None:
                return meta
            check = Check(key, item.version) if item is not None else Check.absent(key)
            mutations: list[Mutation] = [
                Put(key, json.dumps(new).encode()),
                Put(active_key(user), str(new["last_read_at_us"]).encode()),
            ]
            try:
                await self.kv.write(mutations, [check])
            except ConditionFailed:
                continue
            return new
        raise Unavailable("the reader's meta is contended; try again", code="contended")

    async def _raise_horizon(self, user: str, horizon: str) -> None:
        """Raise the reader's horizon to ``horizon`` (it only ever rises: see get_feed)."""

        def raised(meta: dict[str, Any] | None) -> dict[str, Any] | None:
            if meta is None or meta.get("horizon", "") >= horizon:
                return None
            return {**meta, "horizon": horizon}

        await self._update_meta(user, raised)

    # ------------------------------------------------------------------ read path

    async def get_feed(self, viewer: str, limit: int, cursor: str) -> tuple[list[ppb.Post], str]:
        _check_user(viewer)
        size = limit_of(limit)
        position = decode_cursor(cursor)
        before = position.decode(errors="replace") if position else ""
        meta = await self._fresh_meta(viewer)
        scan_cursor = inbox_key(viewer, before).key.hex() if before else ""
        rows, _ = await self.kv.scan(
            "feed", viewer.encode(), b"i:", cursor=scan_cursor, limit=size, reverse=True
        )
        # The inbox holds every followee's posts down to the horizon; below it, where some
        # followee's older posts were never put in (a backfill or a rebuild takes a few of
        # each) or were trimmed, the followees' own timelines are read instead.
        horizon = meta.get("horizon", "")
        inbox = [(r.key.key.decode()[2:], r.value.decode()) for r in rows]
        trusted = [item for item in inbox if item[0] > horizon]
        celebrities = meta["celebrities"]
        timelines = await self._timelines([viewer, *celebrities], size, before)
        if horizon and len(trusted) < size:
            deep = min(before, horizon + "~") if before else horizon + "~"  # the horizon too
            followees = await views.followees(self.kv, viewer)
            ordinary = [f for f in followees if f not in set(celebrities)]
            timelines += await self._timelines(ordinary, size, deep)
        records = {r["id"]: r for t in timelines for r in t}
        others = [[(r["id"], r["author_id"]) for r in t] for t in timelines]
        merged = heapq.merge(trusted, *others, key=lambda item: item[0], reverse=True)
        page: list[Item] = []
        for item in merged:
            if page and page[-1][0] == item[0]:
                continue  # the same post from two sources (the inbox and a timeline)
            page.append(item)
            if len(page) == size:
                break
        # More exist if something fetched was not shown, or a source may hold more than it sent.
        sources = (inbox, *others)
        more = len(trusted) + sum(map(len, others)) > len(page)
        more = more or any(len(s) == size for s in sources)
        ids = [p for p, _ in page]
        found = await views.posts_by_id(self.kv, ids, viewer, records)
        next_cursor = encode_cursor(page[-1][0].encode()) if more and page else ""
        return views.ordered(found, ids), next_cursor

    async def _fresh_meta(self, viewer: str) -> dict[str, Any]:
        """The reader's meta, rebuilding the inbox first if they were away; marks them active."""
        now = now_us()
        meta = await self._meta(viewer)
        if meta is None or now - meta["last_read_at_us"] > self.settings.active_window_s * 1e6:
            await self.rebuild(viewer)
            meta = await self._meta(viewer)
            assert meta is not None
            return meta
        news: dict[str, Any] = {}
        if now - meta.get("celebrities_at_us", 0) > self.settings.celebrities_refresh_s * 1e6:
            followees = await views.followees(self.kv, viewer)
            news.update(celebrities=await self.celebrities(followees), celebrities_at_us=now)
        if now - meta["last_read_at_us"] > 60e6:  # written at most once a minute per reader
            news["last_read_at_us"] = now
        if not news:
            return meta
        fresh = await self._update_meta(viewer, lambda held: {**(held or meta), **news})
        assert fresh is not None
        return fresh

    async def rebuild(self, user: str) -> int:
        """Refill ``user``'s inbox from the recent posts of the users they follow."""
        _check_user(user)
        followees = await views.followees(self.kv, user)
        celebrities = await self.celebrities(followees)
        ordinary = [f for f in followees if f not in set(celebrities)]
        recent = await self._timelines(ordinary, self.settings.backfill_posts)
        everything = [(r["id"], r["author_id"]) for t in recent for r in t]
        newest = heapq.nlargest(self.settings.inbox_capacity, everything)
        # Below its horizon, the inbox is not every followee's whole history: under the oldest
        # post taken of a followee who has more, and under the cap.
        cut = [self._cut(t) for t in recent]
        if len(everything) > len(newest):
            cut.append(newest[-1][0])
        await self._add_rows(user, newest)
        await self._trim(user)
        now = now_us()
        rebuilt = {
            "celebrities": celebrities,
            "celebrities_at_us": now,
            "last_rebuilt_at_us": now,
            "last_read_at_us": now,
        }

        def rebuilt_meta(held: dict[str, Any] | None) -> dict[str, Any]:
            # A horizon only rises: one too high costs deep pages timeline reads, never a gap.
            horizon = max((held or {}).get("horizon", ""), *cut, "")
            return {**(held or {}), **rebuilt, "horizon": horizon}

        await self._update_meta(user, rebuilt_meta)
        return len(newest)

    def _cut(self, timeline: Sequence[Record]) -> str:
        """Where a followee's posts taken into the inbox stop short of all of theirs: at the
        oldest taken, if the read was full (there may be more); else nowhere ("")."""
        return timeline[-1]["id"] if len(timeline) == self.settings.backfill_posts else ""

    async def _add_rows(self, user: str, rows: Sequence[Item]) -> int:
        """Put ``rows`` (post id, author) into ``user``'s inbox, those not there yet, counted:
        a write per 300 rows, conditional on each being absent. Returns the inbox's size."""
        size = 0
        for start in range(0, len(rows), ROWS_PER_WRITE):
            chunk = rows[start : start + ROWS_PER_WRITE]
            for _ in range(CONTENDED):
                keys = [inbox_key(user, p) for p, _ in chunk]
                found = await self.kv.multi_get([*keys, inbox_size(user)])
                new = [(k, a) for k, (_, a) in zip(keys, chunk, strict=True) if found[k] is None]
                size = views.count(found[inbox_size(user)])
                if not new:
                    break
                mutations: list[Mutation] = [Put(k, a.encode()) for k, a in new]
                mutations.append(Increment(inbox_size(user), len(new)))
                try:
                    reply = await self.kv.write(mutations, [Check.absent(k) for k, _ in new])
                except ConditionFailed:
                    continue  # a delivery raced us: look again
                size = int(reply.results[-1].value)
                break
        return size

    async def _remove_rows(self, user: str, keys: Sequence[Key]) -> None:
        """Delete those of ``keys`` still in ``user``'s inbox, counted (conditional on each)."""
        for _ in range(CONTENDED):
            found = await self.kv.multi_get(keys)
            held = [k for k in keys if found[k] is not None]
            if not held:
                return
            mutations: list[Mutation] = [Delete(k) for k in held]
            mutations.append(Increment(inbox_size(user), -len(held)))
            try:
                await self.kv.write(mutations, [Check.present(k) for k in held])
            except ConditionFailed:
                continue
            return

    async def _trim(self, user: str, size: int | None = None) -> None:
        """Back to ``inbox_capacity``: the oldest rows over it go."""
        if size is None:
            size = views.count(await self.kv.get(inbox_size(user)))
        over = size - self.settings.inbox_capacity
        oldest_gone = ""
        while over > 0:
            rows, _ = await self.kv.scan(
                "feed", user.encode(), b"i:", limit=min(over, ROWS_PER_WRITE)
            )
            if not rows:
                break
            await self._remove_rows(user, [r.key for r in rows])
            oldest_gone = rows[-1].key.key.decode()[2:]
            over -= len(rows)
        if oldest_gone:  # below what was trimmed, the timelines tell (get_feed)
            await self._raise_horizon(user, oldest_gone)

    async def inbox_stats(self, user_id: str) -> pb.InboxStats:
        _check_user(user_id)
        meta = await self._meta(user_id) or {}
        size = views.count(await self.kv.get(inbox_size(user_id)))
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

    async def deliver(self, post_id: str, author: str, users: Sequence[str]) -> None:
        """The post into each of ``users``' inboxes with their counts (the row and ``#i`` in
        one unconditional write per inbox, merged with the others bound for the same shard);
        an inbox a tenth over its capacity is trimmed back to it. A redelivered post counts
        twice: the count only says when to trim, and a trim then leaves a row fewer."""
        sizes = await self.kv.apply_many(
            [
                [Put(inbox_key(u, post_id), author.encode()), Increment(inbox_size(u), 1)]
                for u in users
            ]
        )
        slack = self.settings.inbox_capacity // 10
        await asyncio.gather(
            *(
                self._trim(u, int(size[1].value))
                for u, size in zip(users, sizes, strict=True)
                if int(size[1].value) > self.settings.inbox_capacity + slack
            )
        )

    async def retract(self, post_id: str, users: Sequence[str]) -> None:
        await asyncio.gather(*(self._remove_rows(u, [inbox_key(u, post_id)]) for u in users))

    async def backfill(self, user: str, author: str) -> int:
        """``user`` now follows ``author``: their recent posts into the inbox (or, for a
        celebrity, merged at read time from now on)."""
        return await self.backfill_many([user], [author])

    async def backfill_many(self, users: Sequence[str], authors: Sequence[str]) -> int:
        """Each of ``users`` now follows each of ``authors`` (a follow: one and one; an import
        step: one and many; a join step: many and one): the authors' recent posts go into the
        users' inboxes — the timelines read once, one write per inbox — and celebrities into
        the readers' lists of them. Only active readers': the others' inboxes are rebuilt when
        they read next. Returns the inbox rows written."""
        for u in (*users, *authors):
            _check_user(u)
        users = await self.filter_active(users)
        if not users:
            return 0
        celebrities = set(await self.celebrities(authors))
        ordinary = [a for a in dict.fromkeys(authors) if a not in celebrities]
        if celebrities:
            await asyncio.gather(*(self._add_celebrities(u, celebrities) for u in users))
        recent = await self._timelines(ordinary, self.settings.backfill_posts)
        rows = [(r["id"], r["author_id"]) for t in recent for r in t]
        if not rows:
            return 0
        sizes = await asyncio.gather(*(self._add_rows(u, rows) for u in dict.fromkeys(users)))
        cut = max((self._cut(t) for t in recent), default="")
        if cut:  # the rows first, then the horizon: a page never trusts rows not there yet
            await asyncio.gather(*(self._raise_horizon(u, cut) for u in dict.fromkeys(users)))
        slack = self.settings.inbox_capacity // 10
        await asyncio.gather(
            *(
                self._trim(u, size)
                for u, size in zip(dict.fromkeys(users), sizes, strict=True)
                if size > self.settings.inbox_capacity + slack
            )
        )
        return len(rows) * len(users)

    async def _add_celebrities(self, user: str, celebrities: set[str]) -> None:
        """Only for a reader with a meta (one without is rebuilt on their next read)."""

        def added(meta: dict[str, Any] | None) -> dict[str, Any] | None:
            if meta is None or celebrities <= set(meta["celebrities"]):
                return None
            return {**meta, "celebrities": sorted(set(meta["celebrities"]) | celebrities)}

        await self._update_meta(user, added)

    async def remove_author(self, user: str, author: str) -> int:
        _check_user(user)
        removed = 0
        async for rows in self.kv.scan_pages("feed", user.encode(), b"i:"):
            mine = [r.key for r in rows if r.value == author.encode()]
            if mine:  # one partition, one shard: one atomic write per page
                await self._remove_rows(user, mine)
            removed += len(mine)

        def without(meta: dict[str, Any] | None) -> dict[str, Any] | None:
            if meta is None or author not in meta["celebrities"]:
                return None
            return {**meta, "celebrities": [c for c in meta["celebrities"] if c != author]}

        await self._update_meta(user, without)
        return removed

    async def filter_active(self, users: Sequence[str]) -> list[str]:
        keys = {u: active_key(u) for u in dict.fromkeys(users) if u}
        found = await self.kv.multi_get(keys.values())
        horizon = now_us() - self.settings.active_window_s * 1e6
        return [u for u, k in keys.items() if views.count(found[k]) >= horizon]

    # ------------------------------------------------------------------ notifications

    async def add_notifications(self, deliveries: Sequence[pb.Delivery]) -> None:
        """Into their users' inboxes, each at most once per dedup key: a user's share of them
        in one write, conditional on each dedup row being absent (a celebrity's join notifies
        it of a batch of new followers in one write, not one each)."""
        by_user: dict[str, list[pb.Delivery]] = {}
        for d in deliveries:
            _check_delivery(d)
            if d.notification.actor_id != d.user_id:
                by_user.setdefault(d.user_id, []).append(d)
        await asyncio.gather(*(self._notify(user, mine) for user, mine in by_user.items()))

    async def _notify(self, user: str, deliveries: list[pb.Delivery]) -> None:
        for start in range(0, len(deliveries), NOTES_PER_WRITE):
            chunk = deliveries[start : start + NOTES_PER_WRITE]
            dedups = {d.dedup_key: dedup_key(user, d.dedup_key) for d in chunk if d.dedup_key}
            new = list({d.dedup_key or d.notification.id: d for d in chunk}.values())
            for _ in range(CONTENDED):
                if not new:
                    break
                mutations: list[Mutation] = []
                checks = []
                for d in new:
                    n = d.notification
                    mutations.append(Put(notification_key(user, n.id), n.SerializeToString()))
                    if d.dedup_key:
                        mutations.append(Put(dedups[d.dedup_key], n.id.encode()))
                        checks.append(Check.absent(dedups[d.dedup_key]))
                try:
                    await self.kv.write(mutations, checks)
                except ConditionFailed:
                    # Some were delivered before (a redelivered job): the others, again.
                    held = await self.kv.multi_get(dedups.values())
                    new = [d for d in new if not d.dedup_key or held[dedups[d.dedup_key]] is None]
                    continue
                break

    async def notifications(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.Notification], dict[str, upb.User], str]:
        _check_user(user_id)
        items, next_cursor = await self.kv.scan(
            "notifications",
            user_id.encode(),
            b"n:",
            cursor=cursor,
            limit=limit_of(limit),
            reverse=True,
        )
        found = [pb.Notification.FromString(i.value) for i in items]
        actors = await views.users_by_id(self.kv, [n.actor_id for n in found])
        return found, actors, next_cursor
