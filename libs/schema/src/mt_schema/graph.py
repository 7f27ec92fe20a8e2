"""The graph service's keyspace: follow edges from both sides, their counts, pending follows.

Partition = the user the rows belong to. ``out:<followee>`` (the follow time) is the edge and
its idempotency check; ``o:<time><followee>`` lists whom the user follows, newest first by a
reverse scan; ``in:``/``i:`` are the same from the followee's side (a mirror of the followers'
``out:`` rows, kept by the follow job); ``#following``/``#followers`` count them.
"""

from __future__ import annotations

from mt_kv_client import Key

KS = "graph"
FOLLOWING = b"#following"
FOLLOWERS = b"#followers"


def time_hex(at_us: int) -> str:
    return f"{at_us:016x}"


def _key(user_id: str, suffix: str | bytes) -> Key:
    return Key(KS, user_id.encode(), suffix if isinstance(suffix, bytes) else suffix.encode())


def out_key(follower: str, followee: str) -> Key:
    return _key(follower, f"out:{followee}")


def following_row(follower: str, followee: str, at_us: int) -> Key:
    return _key(follower, f"o:{time_hex(at_us)}{followee}")


def in_key(followee: str, follower: str) -> Key:
    return _key(followee, f"in:{follower}")


def follower_row(followee: str, follower: str, at_us: int) -> Key:
    return _key(followee, f"i:{time_hex(at_us)}{follower}")


def following_count(user_id: str) -> Key:
    return _key(user_id, FOLLOWING)


def followers_count(user_id: str) -> Key:
    return _key(user_id, FOLLOWERS)


def pending_key(legacy_followee: str, user_id: str) -> Key:
    return Key(KS, f"pending:{legacy_followee}".encode(), user_id.encode())


def listed_user(key: bytes, prefix: str) -> tuple[str, int]:
    """(user id, follow time) of an ``o:``/``i:`` row's key."""
    rest = key.decode()[len(prefix) :]
    return rest[16:], int(rest[:16], 16)
