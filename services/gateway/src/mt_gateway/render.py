"""From service messages to the REST shapes: ids to users, counts, liked_by_me, RFC 3339.

Hydration is batched: a page of posts costs one BatchGetUsers, one counters Get and one
BatchGetLiked, whatever its length.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from mt_core.rpc.client import call
from mt_core.rpc.services import Services
from mt_proto import counters_pb2 as cpb
from mt_proto import feed_pb2 as fpb
from mt_proto import graph_pb2 as gpb
from mt_proto import posts_pb2 as ppb
from mt_proto import users_pb2 as upb

JSON = dict[str, Any]
_NOTIFICATION_TYPES = {
    fpb.NOTIFICATION_TYPE_FOLLOW: "follow",
    fpb.NOTIFICATION_TYPE_LIKE: "like",
    fpb.NOTIFICATION_TYPE_REPLY: "reply",
}
_IMPORT_STATES = {
    gpb.IMPORT_STATE_QUEUED: "queued",
    gpb.IMPORT_STATE_RUNNING: "running",
    gpb.IMPORT_STATE_DONE: "done",
    gpb.IMPORT_STATE_FAILED: "failed",
}


def rfc3339(at_us: int) -> str:
    moment = datetime.fromtimestamp(at_us / 1_000_000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _key(kind: cpb.CounterKind.ValueType, entity: str) -> cpb.CounterKey:
    return cpb.CounterKey(kind=kind, entity_id=entity)


async def counts(
    b: Services, keys: Sequence[cpb.CounterKey], fresh: bool
) -> dict[tuple[int, str], int]:
    if not keys:
        return {}
    reply = await call(b.counters.Get(cpb.GetRequest(keys=keys, fresh=fresh)))
    return {(v.key.kind, v.key.entity_id): v.value for v in reply.values}


async def users(b: Services, found: Sequence[upb.User], fresh: bool = False) -> list[JSON]:
    kinds = (cpb.COUNTER_KIND_FOLLOWERS, cpb.COUNTER_KIND_FOLLOWING, cpb.COUNTER_KIND_POSTS)
    values = await counts(b, [_key(k, u.id) for u in found for k in kinds], fresh)
    return [
        {
            "id": u.id,
            "handle": u.handle,
            "display_name": u.display_name,
            "bio": u.bio,
            "followers_count": values.get((cpb.COUNTER_KIND_FOLLOWERS, u.id), 0),
            "following_count": values.get((cpb.COUNTER_KIND_FOLLOWING, u.id), 0),
            "posts_count": values.get((cpb.COUNTER_KIND_POSTS, u.id), 0),
            "created_at": rfc3339(u.created_at_us),
        }
        for u in found
    ]


async def user(b: Services, u: upb.User, fresh: bool = False) -> JSON:
    return (await users(b, [u], fresh))[0]


async def users_by_id(b: Services, ids: Sequence[str]) -> dict[str, upb.User]:
    if not ids:
        return {}
    reply = await call(
        b.users.BatchGetUsers(upb.BatchGetUsersRequest(user_ids=list(dict.fromkeys(ids))))
    )
    return dict(reply.users)


async def users_list(b: Services, ids: Sequence[str]) -> list[JSON]:
    """Users in the order of ``ids``; ids of accounts that are gone are left out."""
    found = await users_by_id(b, ids)
    return await users(b, [found[i] for i in ids if i in found])


async def posts(
    b: Services, found: Sequence[ppb.Post], viewer: str | None, fresh: bool = False
) -> list[JSON]:
    ids = [p.id for p in found]
    keys = [_key(k, i) for i in ids for k in (cpb.COUNTER_KIND_LIKES, cpb.COUNTER_KIND_REPLIES)]

    async def liked() -> set[str]:
        if not viewer or not ids:
            return set()
        reply = await call(
            b.posts.BatchGetLiked(ppb.BatchGetLikedRequest(user_id=viewer, post_ids=ids))
        )
        return set(reply.liked_post_ids)

    authors, values, mine = await asyncio.gather(
        users_by_id(b, [p.author_id for p in found]), counts(b, keys, fresh), liked()
    )
    out = []
    for p in found:
        author = authors.get(p.author_id)
        out.append(
            {
                "id": p.id,
                "author": {
                    "id": p.author_id,
                    "handle": author.handle if author else "",
                    "display_name": author.display_name if author else "",
                },
                "text": p.text,
                "reply_to": p.reply_to if p.HasField("reply_to") else None,
                "created_at": rfc3339(p.created_at_us),
                "like_count": values.get((cpb.COUNTER_KIND_LIKES, p.id), 0),
                "reply_count": values.get((cpb.COUNTER_KIND_REPLIES, p.id), 0),
                "liked_by_me": p.id in mine,
            }
        )
    return out


async def posts_by_id(b: Services, ids: Sequence[str], viewer: str | None) -> list[JSON]:
    if not ids:
        return []
    reply = await call(b.posts.BatchGetPosts(ppb.BatchGetPostsRequest(post_ids=list(ids))))
    return await posts(b, [reply.posts[i] for i in ids if i in reply.posts], viewer)


def import_(i: gpb.Import) -> JSON:
    return {
        "id": i.id,
        "state": _IMPORT_STATES.get(i.state, "queued"),
        "total": i.total,
        "done": i.done,
        "pending": i.pending,
    }


async def notifications(b: Services, found: Sequence[fpb.Notification]) -> list[JSON]:
    actors = await users_by_id(b, [n.actor_id for n in found])
    hydrated = dict(zip(actors, await users(b, list(actors.values())), strict=True))
    return [
        {
            "id": n.id,
            "type": _NOTIFICATION_TYPES.get(n.type, "follow"),
            "actor": hydrated[n.actor_id],
            "post_id": n.post_id if n.HasField("post_id") else None,
            "created_at": rfc3339(n.created_at_us),
        }
        for n in found
        if n.actor_id in hydrated
    ]


def page(items: list[JSON], next_cursor: str) -> JSON:
    return {"items": items, "next_cursor": next_cursor or None}
