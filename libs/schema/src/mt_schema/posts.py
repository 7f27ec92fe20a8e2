"""The posts service's keyspace: a partition per author, holding everything about their posts.

``u:<author>``: ``p:<post id>`` is the post's record (JSON) and, since ids sort by time, the
author's timeline (a reverse scan, newest first); ``#posts`` counts them. A post's likes are
``l:<post>:<user>`` (the like's time) counted by ``#l:<post>``, its replies ``r:<post>:<reply>``
(oldest first by a forward scan) counted by ``#r:<post>``; ``idem:<key>`` holds the post an
Idempotency-Key made. A post's id carries its author, so a like or a reply is one write, in
one partition, conditional on the post being there.
"""

from __future__ import annotations

import json
from typing import Any

from mt_core.ids import ID_LENGTH, is_id, new_id
from mt_kv_client import Key

KS = "posts"
POSTS = b"#posts"
MAX_POST_ID = 2 * ID_LENGTH + 64


def new_post_id(author: str, at_us: int) -> str:
    """``<time><random><author id>``: sorts by time, and names its author's partition."""
    return new_id(at_us) + author


def author_of(post_id: str) -> str | None:
    """The author a post id names; None if it is not a post id."""
    if not ID_LENGTH < len(post_id) <= MAX_POST_ID or not is_id(post_id[:ID_LENGTH]):
        return None
    return post_id[ID_LENGTH:]


def partition(author: str) -> bytes:
    return f"u:{author}".encode()


def _key(author: str, suffix: str | bytes) -> Key:
    return Key(KS, partition(author), suffix if isinstance(suffix, bytes) else suffix.encode())


def record_key(post_id: str) -> Key:
    author = author_of(post_id)
    assert author is not None, post_id
    return _key(author, f"p:{post_id}")


def posts_count(author: str) -> Key:
    return _key(author, POSTS)


def like_key(post_id: str, user_id: str) -> Key:
    return _key(_author(post_id), f"l:{post_id}:{user_id}")


def likes_count(post_id: str) -> Key:
    return _key(_author(post_id), f"#l:{post_id}")


def reply_row(parent: str, reply_id: str) -> Key:
    return _key(_author(parent), f"r:{parent}:{reply_id}")


def replies_prefix(parent: str) -> bytes:
    return f"r:{parent}:".encode()


def replies_count(parent: str) -> Key:
    return _key(_author(parent), f"#r:{parent}")


def idempotency_key(author: str, key: str) -> Key:
    return _key(author, f"idem:{key}")


def _author(post_id: str) -> str:
    author = author_of(post_id)
    assert author is not None, post_id
    return author


def decode(value: bytes) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(value)
    return record
