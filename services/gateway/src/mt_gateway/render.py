"""From service messages to the REST shapes: users, posts, imports, notifications, pages.

The services answer hydrated (a post with its author, counts and liked_by_me; a user with its
counts: :mod:`mt_schema.views`), so rendering is formatting only — no call of its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

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


def user(u: upb.User) -> JSON:
    return {
        "id": u.id,
        "handle": u.handle,
        "display_name": u.display_name,
        "bio": u.bio,
        "followers_count": u.followers_count,
        "following_count": u.following_count,
        "posts_count": u.posts_count,
        "created_at": rfc3339(u.created_at_us),
    }


def users(found: Sequence[upb.User]) -> list[JSON]:
    return [user(u) for u in found]


def post(p: ppb.Post) -> JSON:
    return {
        "id": p.id,
        "author": {
            "id": p.author_id,
            "handle": p.author.handle,
            "display_name": p.author.display_name,
        },
        "text": p.text,
        "reply_to": p.reply_to if p.HasField("reply_to") else None,
        "created_at": rfc3339(p.created_at_us),
        "like_count": p.like_count,
        "reply_count": p.reply_count,
        "liked_by_me": p.liked_by_me,
    }


def posts(found: Sequence[ppb.Post]) -> list[JSON]:
    return [post(p) for p in found]


def import_(i: gpb.Import) -> JSON:
    return {
        "id": i.id,
        "state": _IMPORT_STATES.get(i.state, "queued"),
        "total": i.total,
        "done": i.done,
        "pending": i.pending,
    }


def notifications(found: Sequence[fpb.Notification], actors: Mapping[str, upb.User]) -> list[JSON]:
    return [
        {
            "id": n.id,
            "type": _NOTIFICATION_TYPES.get(n.type, "follow"),
            "actor": user(actors[n.actor_id]),
            "post_id": n.post_id if n.HasField("post_id") else None,
            "created_at": rfc3339(n.created_at_us),
        }
        for n in found
        if n.actor_id in actors
    ]


def page(items: list[JSON], next_cursor: str) -> JSON:
    return {"items": items, "next_cursor": next_cursor or None}
