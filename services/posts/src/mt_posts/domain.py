"""Posts, replies and likes over the KV service (layout: :mod:`mt_schema.posts`).

Everything about a post lives in its author's partition, and the post id names its author, so
each action is ONE conditional write there, its count and its job (the outbox row) included:

- a post: the record, ``#posts`` and the fan-out job, conditional on the record being new —
  and, with an Idempotency-Key, on the key's row being absent: a retry finds the key's post;
- a like: the like row, ``#l:<post>`` and the notification job, conditional on the like being
  absent and the post present; an unlike: the same undone, conditional on the like's version;
- a reply is a post, then its link in the parent's partition (the reply row, ``#r:<parent>``
  and the parent author's notification), conditional on the link being absent — made again by
  a retry with the same Idempotency-Key, or by the reply's fan-out job, if a crash cut it off.

Posts are answered as a viewer sees them (:mod:`mt_schema.views`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from mt_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from mt_core.ids import now_us
from mt_core.paging import check_batch, limit_of
from mt_jobs import Job, Outbox
from mt_kv_client import KV, ConditionFailed
from mt_kv_client.client import Check, Delete, Increment, Item, Mutation, Put
from mt_proto import posts_pb2 as pb
from mt_schema import views
from mt_schema.posts import (
    KS,
    author_of,
    decode,
    idempotency_key,
    like_key,
    likes_count,
    new_post_id,
    partition,
    posts_count,
    record_key,
    replies_count,
    replies_prefix,
    reply_row,
)

from mt_posts.settings import Settings

Record = dict[str, Any]


def notify_job(user_id: str, type_: str, actor: str, at_us: int, post_id: str, dedup: str) -> Job:
    """A notification for the workers' ``notify`` kind, delivered at most once per ``dedup``."""
    payload = {
        "user_id": user_id,
        "type": type_,
        "actor_id": actor,
        "post_id": post_id,
        "at_us": at_us,
        "dedup": dedup,
    }
    return Job("notify", payload, key=user_id)


def fanout_job(op: str, record: Record) -> Job:
    payload = {
        "op": op,
        "post_id": record["id"],
        "author_id": record["author_id"],
        "created_at_us": record["created_at_us"],
    }
    return Job("fanout", payload, key=record["author_id"])


def _not_found(code: str = "post_not_found") -> NotFound:
    return NotFound("no such post", code=code)


def _author(post_id: str) -> str:
    author = author_of(post_id)
    if author is None:
        raise _not_found()
    return author


def _fingerprint(text: str, reply_to: str | None) -> str:
    """What an Idempotency-Key was first used with: the same key with another request is
    refused, not answered with the first one's post."""
    return hashlib.sha256(json.dumps([text, reply_to]).encode()).hexdigest()[:32]


class Posts:
    def __init__(self, settings: Settings, kv: KV, outbox: Outbox) -> None:
        self.settings = settings
        self.kv = kv
        self.outbox = outbox

    # ------------------------------------------------------------------ create / read / delete

    def _clean_text(self, text: str) -> str:
        text = text.strip()
        if not text:
            raise InvalidArgument("a post needs some text", code="text_empty")
        if len(text) > self.settings.max_text_chars:
            raise InvalidArgument(
                f"a post is at most {self.settings.max_text_chars} characters", code="text_too_long"
            )
        return text

    async def create(
        self, author: str, text: str, reply_to: str | None, idempotency_key_: str | None
    ) -> pb.Post:
        if not author or len(author) > 64:
            raise InvalidArgument("an author is required", code="invalid_user_id")
        asked = _fingerprint(text, reply_to)
        text = self._clean_text(text)
        if idempotency_key_ is not None and not 1 <= len(idempotency_key_) <= 128:
            raise InvalidArgument(
                "Idempotency-Key must be 1-128 characters", code="invalid_idempotency_key"
            )
        if reply_to is not None and await self._maybe_record(reply_to) is None:
            raise _not_found("reply_to_not_found")
        at = now_us()
        post_id = new_post_id(author, at)
        record: Record = {
            "id": post_id,
            "author_id": author,
            "text": text,
            "reply_to": reply_to,
            "created_at_us": at,
        }
        staged = self.outbox.stage(record_key(post_id), [fanout_job("add", record)])
        mutations: list[Mutation] = [
            Put(record_key(post_id), json.dumps(record).encode()),
            Increment(posts_count(author), 1),
            *staged.puts,
        ]
        checks = [Check.absent(record_key(post_id))]
        if idempotency_key_ is not None:
            claim = idempotency_key(author, idempotency_key_)
            ttl_ms = self.settings.idempotency_ttl_s * 1000
            mutations.append(Put(claim, f"{post_id}|{asked}".encode(), ttl_ms))
            checks.append(Check.absent(claim))
        try:
            await self.kv.write(mutations, checks)
        except ConditionFailed:
            if idempotency_key_ is None:
                raise
            return await self._made_before(author, idempotency_key_, asked)
        if reply_to is not None:
            await self.link_reply(record)
        self.outbox.settle_soon(staged)
        return (await views.posts_by_id(self.kv, [post_id], author, {post_id: record}))[post_id]

    async def _made_before(self, author: str, key: str, asked: str) -> pb.Post:
        """The post an Idempotency-Key already made (its reply link finished if it was cut)."""
        held = await self.kv.get(idempotency_key(author, key))
        if held is None:  # expired between our write and this read: try as new
            raise FailedPrecondition("retry the request", code="conflict")
        post_id, _, made_with = held.value.decode().partition("|")
        if made_with != asked:
            raise AlreadyExists(
                "this Idempotency-Key was used with a different request",
                code="idempotency_key_reused",
            )
        record = await self._record(post_id)
        if record.get("reply_to"):
            await self.link_reply(record)
        return (await views.posts_by_id(self.kv, [post_id], author, {post_id: record}))[post_id]

    async def link_reply(self, record: Record) -> bool:
        """List a reply under its parent (count and notification included), unless it is
        already: idempotent. Returns whether this call made the link."""
        parent, reply_id = record["reply_to"], record["id"]
        row = reply_row(parent, reply_id)
        note = notify_job(
            _author(parent),
            "reply",
            record["author_id"],
            record["created_at_us"],
            reply_id,
            f"reply:{reply_id}",
        )
        staged = self.outbox.stage(row, [note])
        try:
            await self.kv.write(
                [Put(row, b""), Increment(replies_count(parent), 1), *staged.puts],
                [Check.absent(row)],
            )
        except ConditionFailed:
            return False
        self.outbox.settle_soon(staged)
        return True

    async def _maybe_record(self, post_id: str) -> Record | None:
        if author_of(post_id) is None:
            return None
        item = await self.kv.get(record_key(post_id))
        return decode(item.value) if item is not None else None

    async def _record(self, post_id: str) -> Record:
        record = await self._maybe_record(post_id)
        if record is None:
            raise _not_found()
        return record

    async def get(self, post_id: str, viewer: str = "") -> pb.Post:
        found = await views.posts_by_id(self.kv, [post_id], viewer)
        if post_id not in found:
            raise _not_found()
        return found[post_id]

    async def batch_get(self, post_ids: Sequence[str], viewer: str = "") -> dict[str, pb.Post]:
        check_batch(post_ids)
        return await views.posts_by_id(self.kv, post_ids, viewer)

    async def delete(self, post_id: str, actor: str) -> None:
        author = _author(post_id)
        held = await self.kv.get(record_key(post_id))
        if held is None:
            raise _not_found()
        if author != actor:
            raise PermissionDenied("only the author may delete a post", code="not_author")
        record = decode(held.value)
        staged = self.outbox.stage(record_key(post_id), [fanout_job("remove", record)])
        try:
            await self.kv.write(
                [Delete(record_key(post_id)), Increment(posts_count(author), -1), *staged.puts],
                [Check(record_key(post_id), held.version)],
            )
        except ConditionFailed:
            return  # deleted by a concurrent request
        if record.get("reply_to"):
            await self.unlink_reply(record)
        self.outbox.settle_soon(staged)

    async def unlink_reply(self, record: Record) -> None:
        """Take a deleted reply off its parent's list (and count), if it is still there."""
        row = reply_row(record["reply_to"], record["id"])
        with contextlib.suppress(ConditionFailed):  # already taken off
            await self.kv.write(
                [Delete(row), Increment(replies_count(record["reply_to"]), -1)],
                [Check.present(row)],
            )

    # ------------------------------------------------------------------ lists

    async def user_posts(
        self, author: str, limit: int, cursor: str, before_id: str = "", viewer: str = ""
    ) -> tuple[list[pb.Post], str]:
        if not author or len(author) > 64:
            raise InvalidArgument("an author is required", code="invalid_user_id")
        if not cursor and before_id:
            cursor = f"p:{before_id}".encode().hex()  # the KV's scan cursor: resume below it
        items, next_cursor = await self.kv.scan(
            KS, partition(author), b"p:", cursor=cursor, limit=limit_of(limit), reverse=True
        )
        records = {r["id"]: r for r in (decode(i.value) for i in items)}
        ids = list(records)
        found = await views.posts_by_id(self.kv, ids, viewer, records)
        return views.ordered(found, ids), next_cursor

    async def replies(
        self, post_id: str, limit: int, cursor: str, viewer: str = ""
    ) -> tuple[list[pb.Post], str]:
        await self._record(post_id)
        items, next_cursor = await self.kv.scan(
            KS,
            partition(_author(post_id)),
            replies_prefix(post_id),
            cursor=cursor,
            limit=limit_of(limit),
        )
        ids = [i.key.key[len(replies_prefix(post_id)) :].decode() for i in items]
        found = await views.posts_by_id(self.kv, ids, viewer)
        return views.ordered(found, ids), next_cursor

    # ------------------------------------------------------------------ likes

    async def like(self, user_id: str, post_id: str) -> bool:
        author = _author(post_id)
        key = like_key(post_id, user_id)
        at = now_us()
        note = notify_job(author, "like", user_id, at, post_id, f"like:{post_id}:{user_id}")
        staged = self.outbox.stage(key, [note])
        try:
            await self.kv.write(
                [Put(key, str(at).encode()), Increment(likes_count(post_id), 1), *staged.puts],
                [Check.absent(key), Check.present(record_key(post_id))],
            )
        except ConditionFailed:
            await self._record(post_id)  # the post is gone: 404; else already liked
            return False
        self.outbox.settle_soon(staged)
        return True

    async def unlike(self, user_id: str, post_id: str) -> bool:
        _author(post_id)
        key = like_key(post_id, user_id)
        found = await self.kv.multi_get([record_key(post_id), key])
        if found[record_key(post_id)] is None:
            raise _not_found()
        held: Item | None = found[key]
        if held is None:
            return False
        try:
            await self.kv.write(
                [Delete(key), Increment(likes_count(post_id), -1)], [Check(key, held.version)]
            )
        except ConditionFailed:
            return False
        return True
