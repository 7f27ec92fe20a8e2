"""Idempotency-Key for POST /v1/posts: a retried request gets the first one's answer.

Redis holds ``idem:<user>:<key>`` = ``pending|<fingerprint>`` while the first attempt runs, then
``done|<fingerprint>|<status>|<body>`` for a day. A concurrent retry waits for the answer; the
same key with a different body is refused (409). Redis is a fast path, not the guarantee: the
key also goes to the posts service, which keeps one post per (author, key) in the KV, so a lost
Redis entry or a gateway crash mid-request still yields one post.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mt_core.errors import AlreadyExists, InvalidArgument
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)
Answer = tuple[int, Any]


def fingerprint(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def check_key(key: str) -> str:
    if not 1 <= len(key) <= 128 or not key.isprintable():
        raise InvalidArgument(
            "Idempotency-Key must be 1-128 printable characters", code="invalid_idempotency_key"
        )
    return key


async def once(
    redis: Redis,
    user_id: str,
    key: str,
    body: Any,
    run: Callable[[], Awaitable[Answer]],
    ttl_s: int,
    wait_ms: int,
) -> Answer:
    """Run ``run`` once per (user, key); repeats get the stored answer."""
    name = f"idem:{user_id}:{key}"
    mark = fingerprint(body)
    try:
        claimed = await redis.set(name, f"pending|{mark}", nx=True, ex=ttl_s)
        if not claimed:
            stored = await _wait_done(redis, name, mark, wait_ms)
            if stored is not None:
                return stored
    except RedisError:
        log.warning("idempotency cache unavailable; relying on the posts service")
        return await run()
    status, payload = await run()
    with contextlib.suppress(RedisError):
        await redis.set(name, f"done|{mark}|{status}|{json.dumps(payload)}", ex=ttl_s)
    return status, payload


async def _wait_done(redis: Redis, name: str, mark: str, wait_ms: int) -> Answer | None:
    waited = 0
    while True:
        raw = await redis.get(name)
        if raw is None:
            return None  # expired or lost: run again (the posts service dedups)
        value = raw.decode() if isinstance(raw, bytes) else str(raw)
        state, held_mark, *rest = value.split("|", 3)
        if held_mark != mark:
            raise AlreadyExists(
                "this Idempotency-Key was used with a different request",
                code="idempotency_key_reused",
            )
        if state == "done":
            status, payload = rest
            return int(status), json.loads(payload)
        if waited >= wait_ms:
            return None  # the first attempt may have died: run again (the posts service dedups)
        await asyncio.sleep(0.05)
        waited += 50
