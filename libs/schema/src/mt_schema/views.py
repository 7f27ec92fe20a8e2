"""Answers hydrated where the data is: users with their counts, posts with their author, their
counts and the reader's like — each page of them one batched read (the KV client sends one
BatchGet per replica for all the keys), whichever service serves the answer.

Reads are strong (at the shards' primaries): a reader's own write is in their next read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mt_kv_client import KV, Key
from mt_kv_client.client import Item
from mt_proto import common_pb2 as cpb
from mt_proto import posts_pb2 as ppb
from mt_proto import users_pb2 as upb

from mt_schema import graph, posts, users

Record = dict[str, Any]


def count(item: Item | None) -> int:
    return int(item.value) if item is not None else 0


def _count_keys(user_id: str) -> list[Key]:
    return [
        graph.followers_count(user_id),
        graph.following_count(user_id),
        posts.posts_count(user_id),
    ]


def _user_view(record: Record, found: Mapping[Key, Item | None]) -> upb.User:
    user_id = record["id"]
    user = users.to_pb(record)
    user.followers_count = count(found[graph.followers_count(user_id)])
    user.following_count = count(found[graph.following_count(user_id)])
    user.posts_count = count(found[posts.posts_count(user_id)])
    return user


async def users_by_id(
    kv: KV, user_ids: Sequence[str], records: Mapping[str, Record] | None = None
) -> dict[str, upb.User]:
    """The users (with counts) among ``user_ids`` that exist; ``records`` already read."""
    records = records or {}
    wanted = [u for u in dict.fromkeys(user_ids) if u and len(u) <= 64]
    keys = [users.user_key(u) for u in wanted if u not in records]
    keys += [k for u in wanted for k in _count_keys(u)]
    found = await kv.multi_get(keys)
    out: dict[str, upb.User] = {}
    for user_id in wanted:
        record = records.get(user_id)
        if record is None:
            item = found[users.user_key(user_id)]
            if item is None:
                continue
            record = users.decode(item.value)
        out[user_id] = _user_view(record, found)
    return out


def _post_keys(post_id: str, viewer: str, with_record: bool) -> list[Key]:
    keys = [posts.likes_count(post_id), posts.replies_count(post_id)]
    if with_record:
        keys.append(posts.record_key(post_id))
    if viewer:
        keys.append(posts.like_key(post_id, viewer))
    return keys


def post_view(
    record: Record, author: Record | None, found: Mapping[Key, Item | None], viewer: str
) -> ppb.Post:
    post_id = record["id"]
    view = ppb.Post(
        id=post_id,
        author_id=record["author_id"],
        text=record["text"],
        created_at_us=record["created_at_us"],
        like_count=count(found[posts.likes_count(post_id)]),
        reply_count=count(found[posts.replies_count(post_id)]),
        liked_by_me=bool(viewer) and found[posts.like_key(post_id, viewer)] is not None,
    )
    if record.get("reply_to"):
        view.reply_to = record["reply_to"]
    if author is not None:
        view.author.CopyFrom(users.summary(author))
    else:  # an account that is gone: its posts still show, unnamed
        view.author.CopyFrom(cpb.UserSummary(id=record["author_id"]))
    return view


async def posts_by_id(
    kv: KV,
    post_ids: Sequence[str],
    viewer: str = "",
    records: Mapping[str, Record] | None = None,
) -> dict[str, ppb.Post]:
    """The posts among ``post_ids`` that exist, as ``viewer`` sees them; ``records`` already
    read (a timeline's scan returns them). Authors come from the ids: one round trip."""
    records = records or {}
    wanted = [p for p in dict.fromkeys(post_ids) if posts.author_of(p)]
    authors = {p: posts.author_of(p) or "" for p in wanted}
    keys = [k for p in wanted for k in _post_keys(p, viewer, p not in records)]
    keys += [users.user_key(a) for a in dict.fromkeys(authors.values())]
    found = await kv.multi_get(keys)
    out: dict[str, ppb.Post] = {}
    for post_id in wanted:
        record = records.get(post_id)
        if record is None:
            item = found[posts.record_key(post_id)]
            if item is None:
                continue  # deleted (or never written): lists skip it
            record = posts.decode(item.value)
        author_item = found[users.user_key(authors[post_id])]
        author = users.decode(author_item.value) if author_item is not None else None
        out[post_id] = post_view(record, author, found, viewer)
    return out


async def by_handle(kv: KV, handles: users.Handles, handle: str) -> upb.User | None:
    """The user a handle names, with counts; None for no such user. Usually one round trip
    (the handle's id remembered)."""
    for _ in range(2):
        user_id = await handles.id_of(handle)
        if user_id is None:
            return None
        found = await users_by_id(kv, [user_id])
        if user_id in found:
            return found[user_id]
        handles.forget(handle)  # an abandoned signup's id: ask the KV again
    return None


async def timeline(kv: KV, author: str, limit: int, before_id: str = "") -> list[Record]:
    """The author's newest post records (older than ``before_id``), newest first."""
    cursor = f"p:{before_id}".encode().hex() if before_id else ""
    items, _ = await kv.scan(
        posts.KS, posts.partition(author), b"p:", cursor=cursor, limit=limit, reverse=True
    )
    return [posts.decode(i.value) for i in items]


async def followees(kv: KV, user_id: str) -> list[str]:
    """Everyone ``user_id`` follows, in the order they were followed."""
    found: list[str] = []
    async for rows in kv.scan_pages(graph.KS, user_id.encode(), b"o:"):
        found += [graph.listed_user(r.key.key, "o:")[0] for r in rows]
    return found


def ordered(found: Mapping[str, Any], ids: Sequence[str]) -> list[Any]:
    """``found``'s values in the order of ``ids``, leaving out the ids it lacks."""
    return [found[i] for i in ids if i in found]
