"""Posts, replies and likes over the KV service.

Layout:
- ``posts/<post id>``: the post (JSON); ids sort by creation time;
- ``posts/u:<author>/<post id>``: the author's timeline (a reverse scan is newest first);
- ``posts/r:<parent>/<reply id>``: a thread's direct replies (a forward scan is oldest first);
- ``likes/<post id>/<user id>`` -> like time;
- ``idempotency/<author>/<key>`` -> post id (with a TTL): one post per Idempotency-Key.

Events (fan-out, notifications) are recorded in the outbox before the write they announce and
published after it. Writes go record first, then the claims and indexes, then counters, all
idempotent and keyed by the record's own id or time: a retried request finishes what a cut-off
one began, and never counts twice. Readers skip index rows whose record is gone.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from mt_core.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from mt_core.ids import new_id, now_us
from mt_core.paging import check_batch, limit_of
from mt_core.rpc.client import call
from mt_jobs import Job, Outbox
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Check, Delete
from mt_proto import counters_pb2 as cpb
from mt_proto import counters_pb2_grpc
from mt_proto import posts_pb2 as pb

from mt_posts.settings import Settings

REPAIR_WINDOW_US = 3600 * 1_000_000  # see mt_graph.domain: well inside counters' dedup memory


def _post_key(post_id: str) -> Key:
    return Key("posts", post_id.encode())


def _timeline_key(author: str, post_id: str) -> Key:
    return Key("posts", f"u:{author}".encode(), post_id.encode())


def _reply_key(parent: str, reply_id: str) -> Key:
    return Key("posts", f"r:{parent}".encode(), reply_id.encode())


def _like_key(post_id: str, user_id: str) -> Key:
    return Key("likes", post_id.encode(), user_id.encode())


def _to_pb(r: dict[str, Any]) -> pb.Post:
    post = pb.Post(
        id=r["id"], author_id=r["author_id"], text=r["text"], created_at_us=r["created_at_us"]
    )
    if r.get("reply_to"):
        post.reply_to = r["reply_to"]
    return post


def notify_job(user_id: str, type_: str, actor: str, at_us: int, post_id: str, dedup: str) -> Job:
    """A notification for the workers' ``notify`` kind; they check it still holds (the like
    exists, the reply was published) and deliver it at most once per ``dedup``."""
    payload = {
        "user_id": user_id,
        "type": type_,
        "actor_id": actor,
        "post_id": post_id,
        "at_us": at_us,
        "dedup": dedup,
    }
    return Job("notify", payload, key=user_id)


def _fanout_job(op: str, record: dict[str, Any]) -> Job:
    payload = {
        "op": op,
        "post_id": record["id"],
        "author_id": record["author_id"],
        "created_at_us": record["created_at_us"],
    }
    return Job("fanout", payload, key=record["author_id"])


def _post_jobs(record: dict[str, Any], parent: dict[str, Any] | None) -> list[Job]:
    jobs = [_fanout_job("add", record)]
    if parent is not None:
        post_id, at = record["id"], record["created_at_us"]
        note = notify_job(
            parent["author_id"], "reply", record["author_id"], at, post_id, f"reply:{post_id}"
        )
        jobs.append(note)
    return jobs


class Posts:
    def __init__(
        self,
        settings: Settings,
        kv: KVClient,
        counters: counters_pb2_grpc.CountersServiceAsyncStub,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.counters = counters
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
        self, author: str, text: str, reply_to: str | None, idempotency_key: str | None
    ) -> pb.Post:
        if not author:
            raise InvalidArgument("an author is required", code="invalid_user_id")
        text = self._clean_text(text)
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 128:
            raise InvalidArgument(
                "Idempotency-Key must be 1-128 characters", code="invalid_idempotency_key"
            )
        parent = None
        if reply_to is not None:
            try:
                parent = await self._record(reply_to)
            except NotFound:
                raise NotFound(
                    "the post replied to does not exist", code="reply_to_not_found"
                ) from None
        at = now_us()
        record: dict[str, Any] = {
            "id": new_id(at),
            "author_id": author,
            "text": text,
            "reply_to": reply_to,
            "created_at_us": at,
        }
        # The events first (fan-out, the reply's notification): published even if we die after
        # the write (the outbox relay); harmless if we die before it (handlers find no post).
        intent = await self.outbox.intend(_post_jobs(record, parent))
        await self.kv.put(_post_key(record["id"]), json.dumps(record).encode())
        if idempotency_key is not None:
            claim = Key("idempotency", author.encode(), idempotency_key.encode())
            ttl_ms = self.settings.idempotency_ttl_s * 1000
            won, held = await self.kv.claim(claim, record["id"].encode(), ttl_ms=ttl_ms)
            if not won:
                await self.kv.delete(_post_key(record["id"]))  # ours was never published
                record = await self._record(held.value.decode())
                reply_to = record["reply_to"]
                parent = await self._maybe_record(reply_to) if reply_to else None
                if now_us() - record["created_at_us"] > REPAIR_WINDOW_US:
                    await self.outbox.cancel(intent)  # it announced our unpublished copy
                    return _to_pb(record)
        await self._publish(record, parent)
        await self.outbox.settle(intent)
        return _to_pb(record)

    async def _publish(self, record: dict[str, Any], parent: dict[str, Any] | None) -> None:
        post_id, author = record["id"], record["author_id"]
        rows = [(_timeline_key(author, post_id), b"")]
        deltas = [_delta(cpb.COUNTER_KIND_POSTS, author, +1)]
        if parent is not None:
            rows.append((_reply_key(parent["id"], post_id), b""))
            deltas.append(_delta(cpb.COUNTER_KIND_REPLIES, parent["id"], +1))
        await self.kv.multi_put(rows)
        await self._count(deltas, f"post:{post_id}")

    async def _count(self, deltas: list[cpb.CounterDelta], idempotency_key: str) -> None:
        await call(
            self.counters.Increment(
                cpb.IncrementRequest(deltas=deltas, idempotency_key=idempotency_key)
            )
        )

    async def _maybe_record(self, post_id: str) -> dict[str, Any] | None:
        if not post_id or len(post_id) > 64:
            return None
        item = await self.kv.get(_post_key(post_id))
        return json.loads(item.value) if item is not None else None

    async def _record(self, post_id: str) -> dict[str, Any]:
        record = await self._maybe_record(post_id)
        if record is None:
            raise NotFound("no such post", code="post_not_found")
        return record

    async def get(self, post_id: str) -> pb.Post:
        return _to_pb(await self._record(post_id))

    async def batch_get(self, post_ids: Sequence[str]) -> dict[str, pb.Post]:
        check_batch(post_ids)
        keys = [_post_key(p) for p in dict.fromkeys(post_ids) if p and len(p) <= 64]
        found = await self.kv.multi_get(keys)
        return {
            k.partition.decode(): _to_pb(json.loads(v.value))
            for k, v in found.items()
            if v is not None
        }

    async def delete(self, post_id: str, actor: str) -> None:
        record = await self._record(post_id)
        if record["author_id"] != actor:
            raise PermissionDenied("only the author may delete a post", code="not_author")
        intent = await self.outbox.intend([_fanout_job("remove", record)])
        await self.kv.delete(_post_key(post_id))
        deltas = [_delta(cpb.COUNTER_KIND_POSTS, actor, -1)]
        removals = [self.kv.delete(_timeline_key(actor, post_id))]
        if record.get("reply_to"):
            removals.append(self.kv.delete(_reply_key(record["reply_to"], post_id)))
            deltas.append(_delta(cpb.COUNTER_KIND_REPLIES, record["reply_to"], -1))
        await asyncio.gather(*removals)
        await self._count(deltas, f"delete:{post_id}")
        await self.outbox.settle(intent)

    # ------------------------------------------------------------------ lists

    async def _page(
        self, partition: str, limit: int, cursor: str, reverse: bool
    ) -> tuple[list[pb.Post], str]:
        items, next_cursor = await self.kv.scan(
            "posts", partition.encode(), cursor=cursor, limit=limit_of(limit), reverse=reverse
        )
        ids = [i.key.key.decode() for i in items]
        posts = await self.batch_get(ids)
        return [posts[i] for i in ids if i in posts], next_cursor

    async def user_posts(
        self, author: str, limit: int, cursor: str, before_id: str = ""
    ) -> tuple[list[pb.Post], str]:
        if not author:
            raise InvalidArgument("an author is required", code="invalid_user_id")
        if not cursor and before_id:
            cursor = before_id.encode().hex()  # the KV's scan cursor: resume below this key
        return await self._page(f"u:{author}", limit, cursor, reverse=True)

    async def replies(self, post_id: str, limit: int, cursor: str) -> tuple[list[pb.Post], str]:
        await self._record(post_id)
        return await self._page(f"r:{post_id}", limit, cursor, reverse=False)

    # ------------------------------------------------------------------ likes

    async def like(self, user_id: str, post_id: str) -> bool:
        record = await self._record(post_id)
        key = _like_key(post_id, user_id)
        at = now_us()
        note = notify_job(record["author_id"], "like", user_id, at, post_id, f"like:{post_id}")
        intent = await self.outbox.intend([note])
        changed, held = await self.kv.claim(key, str(at).encode())
        at = int(held.value)
        if changed or now_us() - at <= REPAIR_WINDOW_US:
            await self._count(
                [_delta(cpb.COUNTER_KIND_LIKES, post_id, +1)], f"like:{post_id}:{user_id}:{at}"
            )
        await self.outbox.settle(intent)  # deduplicated per (post, liker) by the inbox
        return changed

    async def unlike(self, user_id: str, post_id: str) -> bool:
        await self._record(post_id)
        key = _like_key(post_id, user_id)
        held = await self.kv.get(key)
        if held is None:
            return False
        try:
            await self.kv.write([Delete(key)], [Check(key, held.version)])
        except FailedPrecondition:
            return False
        at = int(held.value)
        await self._count(
            [_delta(cpb.COUNTER_KIND_LIKES, post_id, -1)], f"unlike:{post_id}:{user_id}:{at}"
        )
        return True

    async def liked(self, user_id: str, post_ids: Sequence[str]) -> list[str]:
        check_batch(post_ids)
        keys = {p: _like_key(p, user_id) for p in dict.fromkeys(post_ids) if p and len(p) <= 64}
        found = await self.kv.multi_get(keys.values())
        return [p for p, k in keys.items() if found[k] is not None]


def _delta(kind: cpb.CounterKind.ValueType, entity: str, delta: int) -> cpb.CounterDelta:
    return cpb.CounterDelta(key=cpb.CounterKey(kind=kind, entity_id=entity), delta=delta)
