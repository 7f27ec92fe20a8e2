"""The feed service's keyspaces: inboxes with their reader's meta, and notification inboxes."""

from __future__ import annotations

from mt_kv_client import Key


def inbox_key(user: str, post_id: str = "") -> Key:
    return Key("feed", user.encode(), f"i:{post_id}".encode())


def inbox_size(user: str) -> Key:
    """How many rows the inbox holds (changed with them, conditional on each row)."""
    return Key("feed", user.encode(), b"#i")


def active_key(user: str) -> Key:
    """When the reader last read (µs), beside their meta: what fan-out reads of a follower."""
    return Key("feed", user.encode(), b"a")


def meta_key(user: str) -> Key:
    return Key("feed", user.encode(), b"meta")


def notification_key(user: str, notification_id: str) -> Key:
    return Key("notifications", user.encode(), f"n:{notification_id}".encode())


def dedup_key(user: str, dedup: str) -> Key:
    return Key("notifications", user.encode(), f"d:{dedup}".encode())
