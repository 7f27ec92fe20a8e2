"""The users service's keyspaces: accounts, handle and legacy claims, sessions."""

from __future__ import annotations

import hashlib
import json
import re
from collections import OrderedDict
from typing import Any

from mt_kv_client import KV, Key
from mt_proto import common_pb2 as cpb
from mt_proto import users_pb2 as pb

HANDLE = re.compile(r"^[a-z0-9_.]{1,30}$")


def canonical_handle(raw: str) -> str | None:
    """The handle as stored (case-folded); None if it cannot be one."""
    handle = raw.strip().casefold()
    return handle if HANDLE.match(handle) else None


def user_key(user_id: str) -> Key:
    return Key("users", user_id.encode())


def handle_key(handle: str) -> Key:
    """One partition per first character: every handle with it, in order (prefix search)."""
    return Key("handles", handle[:1].encode(), handle.encode())


def legacy_key(legacy_id: str) -> Key:
    return Key("legacy", legacy_id.encode())


def assertion_key(legacy_id: str, jti: str) -> Key:
    """A legacy assertion spent (its id, until it would have expired): beside the link."""
    return Key("legacy", legacy_id.encode(), f"jti:{jti}".encode())


def session_key(token: str) -> Key:
    """Only the token's hash is stored: a copy of the store holds no usable token."""
    return Key("sessions", hashlib.sha256(token.encode()).digest())


def decode(value: bytes) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(value)
    return record


def to_pb(record: dict[str, Any]) -> pb.User:
    """The record as an answer shows it (counts are the caller's to fill in)."""
    user = pb.User(
        id=record["id"],
        handle=record["handle"],
        display_name=record["display_name"],
        bio=record["bio"],
        created_at_us=record["created_at_us"],
    )
    if record.get("legacy_id"):
        user.legacy_id = record["legacy_id"]
    return user


def summary(record: dict[str, Any]) -> cpb.UserSummary:
    return cpb.UserSummary(
        id=record["id"], handle=record["handle"], display_name=record["display_name"]
    )


async def session_user(kv: KV, token: str) -> str | None:
    """The user a bearer token is a session of; None for no live session (one read: the
    gateway asks the KV itself)."""
    if not token or len(token) > 256:
        return None
    item = await kv.get(session_key(token))
    return item.value.decode() if item is not None else None


class Handles:
    """Which user a handle names, remembered (a bounded map, oldest forgotten first): a
    handle's claim never changes once made — only a signup that lost its other claim gives
    its handle back, and its record goes with it, so a caller that finds no record for a
    remembered id calls :meth:`forget` and asks again."""

    def __init__(self, kv: KV, size: int = 100_000) -> None:
        self._kv = kv
        self._size = size
        self._ids: OrderedDict[str, str] = OrderedDict()

    async def id_of(self, handle: str, *, remembered: bool = True) -> str | None:
        """The user id ``handle`` names; None for no such user (at most one read; always one
        without ``remembered``, for a write that must not name an abandoned signup's id)."""
        canonical = canonical_handle(handle)
        if canonical is None:
            return None
        known = self._ids.get(canonical) if remembered else None
        if known is not None:
            return known
        item = await self._kv.get(handle_key(canonical))
        if item is None:
            return None
        self.remember(canonical, item.value.decode())
        return item.value.decode()

    def remember(self, handle: str, user_id: str) -> None:
        self._ids[handle] = user_id
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)

    def forget(self, handle: str) -> None:
        self._ids.pop(canonical_handle(handle) or handle, None)
