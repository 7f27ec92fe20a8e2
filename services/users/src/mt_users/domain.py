"""Accounts, sessions and profiles over the KV service.

Layout (keyspace / partition / key):
- ``users/<user id>``: the account record (JSON, with the password hash);
- ``handles/<first char>/<handle>`` -> user id: the uniqueness claim of a handle (a conditional
  put, so of concurrent signups for one handle exactly one wins) and, because one partition
  holds every handle with the same first character, the index of handle-prefix search;
- ``legacy/<legacy id>`` -> user id: one account per legacy account, claimed the same way;
- ``sessions/<sha256(token)>`` -> user id, with a TTL: only the hash is stored, so a leak of the
  store does not leak usable tokens; deleting it revokes the session at once.

The record is written before the claims: an interrupted signup leaves at worst an unreachable
record, never a handle pointing at nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import secrets
from collections.abc import Sequence
from typing import Any

from mt_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from mt_core.ids import new_id, now_us
from mt_core.paging import check_batch, limit_of
from mt_jobs import Intent, Job, Outbox, opportunistic_deadline_ms
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Check, Delete, Put
from mt_legacy import LegacyGraph
from mt_proto import users_pb2 as pb

from mt_users import passwords
from mt_users.settings import Settings

HANDLE = re.compile(r"^[a-z0-9_.]{1,30}$")
HANDLE_PREFIX = re.compile(r"^[a-z0-9_.]{1,30}$")
MAX_DISPLAY_NAME = 64
MAX_BIO = 160


def normalize_handle(raw: str) -> str:
    handle = raw.strip().casefold()
    if not HANDLE.match(handle):
        raise InvalidArgument(
            "handle must be 1-30 characters of a-z, 0-9, '_' and '.'", code="invalid_handle"
        )
    return handle


def _check_password(password: str) -> None:
    if not 8 <= len(password) <= 128:
        raise InvalidArgument("password must be 8 to 128 characters", code="invalid_password")


def _clean_display_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_DISPLAY_NAME or not name.isprintable():
        raise InvalidArgument(
            f"display name must be 1-{MAX_DISPLAY_NAME} printable characters",
            code="invalid_display_name",
        )
    return name


def _clean_bio(bio: str) -> str:
    bio = bio.strip()
    if len(bio) > MAX_BIO:
        raise InvalidArgument(f"bio must be at most {MAX_BIO} characters", code="invalid_bio")
    return bio


def _user_key(user_id: str) -> Key:
    return Key("users", user_id.encode())


def _handle_key(handle: str) -> Key:
    return Key("handles", handle[:1].encode(), handle.encode())


def _legacy_key(legacy_id: str) -> Key:
    return Key("legacy", legacy_id.encode())


def _session_key(token: str) -> Key:
    return Key("sessions", hashlib.sha256(token.encode()).digest())


def _to_pb(record: dict[str, Any]) -> pb.User:
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


async def _none() -> None:
    return None


class Users:
    def __init__(
        self,
        settings: Settings,
        kv: KVClient,
        legacy: LegacyGraph,
        outbox: Outbox,
        hasher: passwords.Hasher,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.legacy = legacy
        self.outbox = outbox
        self.hasher = hasher

    # ------------------------------------------------------------------ accounts

    async def create_account(
        self,
        handle: str | None,
        password: str,
        display_name: str | None,
        legacy_id: str | None,
    ) -> tuple[pb.User, str]:
        if legacy_id is not None:
            legacy_handle = self.legacy.account(legacy_id).handle
            handle = handle or legacy_handle
        if not handle:
            raise InvalidArgument("a handle (or a legacy_id) is required", code="handle_required")
        handle = normalize_handle(handle)
        _check_password(password)
        name = _clean_display_name(display_name) if display_name is not None else handle
        await self._check_free(handle, legacy_id)
        user_id = new_id()
        record: dict[str, Any] = {
            "id": user_id,
            "handle": handle,
            "display_name": name,
            "bio": "",
            "created_at_us": now_us(),
            "legacy_id": legacy_id,
            "password": await self.hasher.hash(password),
        }
        intent = None
        job = None
        if legacy_id is not None:
            # A legacy account joining applies the follows imports left pending for it: the
            # workers' join kind does it, announced before the claim (outbox) so that a crash
            # after the claim cannot lose it; the handler checks the link really was made.
            job = Job(
                "join",
                {"user_id": user_id, "legacy_id": legacy_id},
                key=legacy_id,
                deadline_ms=opportunistic_deadline_ms(now_us() // 1000),
            )
        # Three rounds of writes, each one's independent writes together (a signup holds a
        # new user at the door): the record and the join's announcement, then both claims,
        # then the session and the announcement's settlement.
        intent, _ = await asyncio.gather(
            self.outbox.intend([job]) if job is not None else _none(),
            self.kv.put(_user_key(user_id), json.dumps(record).encode()),
        )
        claims = [_handle_key(handle)] + ([_legacy_key(legacy_id)] if legacy_id else [])
        won = await asyncio.gather(*(self._claim(key, user_id) for key in claims))
        if not all(won):
            await asyncio.gather(
                *(self._release(key, user_id) for key, ok in zip(claims, won, strict=True) if ok)
            )
            await self._abandon(user_id, intent)
            if not won[0]:
                raise AlreadyExists(f"handle {handle!r} is taken", code="handle_taken")
            raise AlreadyExists(
                f"legacy account {legacy_id} is linked to another user", code="legacy_taken"
            )
        token, _ = await asyncio.gather(
            self._open_session(user_id),
            self.outbox.settle(intent) if intent is not None else _none(),
        )
        return _to_pb(record), token

    async def _check_free(self, handle: str, legacy_id: str | None) -> None:
        """Refuse a taken handle or legacy account before paying for the password hash (one
        read for both). Only a fast path: the claims after the hash decide any race."""
        keys = [_handle_key(handle)] + ([_legacy_key(legacy_id)] if legacy_id else [])
        found = await self.kv.multi_get(keys)
        if found[keys[0]] is not None:
            raise AlreadyExists(f"handle {handle!r} is taken", code="handle_taken")
        if legacy_id is not None and found[keys[1]] is not None:
            raise AlreadyExists(
                f"legacy account {legacy_id} is linked to another user", code="legacy_taken"
            )

    async def _abandon(self, user_id: str, intent: Intent | None) -> None:
        """A signup that lost a claim: its record is unreachable and its join never happened."""
        await self.kv.delete(_user_key(user_id))
        if intent is not None:
            await self.outbox.cancel(intent)

    async def _claim(self, key: Key, user_id: str) -> bool:
        won, _ = await self.kv.claim(key, user_id.encode())
        return won

    async def _release(self, key: Key, user_id: str) -> None:
        held = await self.kv.get(key)
        if held is not None and held.value == user_id.encode():
            # Only if it is still ours (version unchanged): never free someone else's claim.
            with contextlib.suppress(FailedPrecondition):
                await self.kv.write([Delete(key)], [Check(key, held.version)])

    async def _record(self, user_id: str) -> dict[str, Any]:
        item = await self.kv.get(_user_key(user_id)) if user_id else None
        if item is None:
            raise NotFound("no such user", code="user_not_found")
        record: dict[str, Any] = json.loads(item.value)
        return record

    async def _id_by(self, key: Key) -> str:
        item = await self.kv.get(key)
        if item is None:
            raise NotFound("no such user", code="user_not_found")
        return item.value.decode()

    async def get_user(self, user_id: str) -> pb.User:
        return _to_pb(await self._record(user_id))

    async def get_by_handle(self, handle: str) -> pb.User:
        try:
            handle = normalize_handle(handle)
        except InvalidArgument:
            raise NotFound("no such user", code="user_not_found") from None
        return await self.get_user(await self._id_by(_handle_key(handle)))

    async def get_by_legacy_id(self, legacy_id: str) -> pb.User:
        if not legacy_id:
            raise NotFound("no such user", code="user_not_found")
        return await self.get_user(await self._id_by(_legacy_key(legacy_id)))

    async def batch_get(self, user_ids: Sequence[str]) -> dict[str, pb.User]:
        check_batch(user_ids)
        keys = [_user_key(u) for u in dict.fromkeys(user_ids) if u]
        found = await self.kv.multi_get(keys)
        return {
            key.partition.decode(): _to_pb(json.loads(item.value))
            for key, item in found.items()
            if item is not None
        }

    async def batch_get_by_legacy(self, legacy_ids: Sequence[str]) -> dict[str, pb.User]:
        check_batch(legacy_ids)
        keys = [_legacy_key(i) for i in dict.fromkeys(legacy_ids) if i]
        links = await self.kv.multi_get(keys)
        ids = {k.partition.decode(): v.value.decode() for k, v in links.items() if v is not None}
        users = await self.batch_get(list(ids.values()))
        return {legacy: users[uid] for legacy, uid in ids.items() if uid in users}

    async def update_profile(
        self, user_id: str, display_name: str | None, bio: str | None
    ) -> pb.User:
        name = _clean_display_name(display_name) if display_name is not None else None
        new_bio = _clean_bio(bio) if bio is not None else None
        for _ in range(5):
            item = await self.kv.get(_user_key(user_id))
            if item is None:
                raise NotFound("no such user", code="user_not_found")
            record = json.loads(item.value)
            if name is not None:
                record["display_name"] = name
            if new_bio is not None:
                record["bio"] = new_bio
            try:
                # Compare-and-set on the version read: a concurrent update is retried, not lost.
                await self.kv.write(
                    [Put(_user_key(user_id), json.dumps(record).encode())],
                    [Check(_user_key(user_id), item.version)],
                )
            except FailedPrecondition:
                continue
            return _to_pb(record)
        raise FailedPrecondition("profile changed concurrently; try again", code="conflict")

    async def search(self, prefix: str, limit: int, cursor: str) -> tuple[list[pb.User], str]:
        prefix = prefix.strip().casefold()
        if not HANDLE_PREFIX.match(prefix):
            raise InvalidArgument("q must be a handle prefix", code="invalid_query")
        items, next_cursor = await self.kv.scan(
            "handles", prefix[:1].encode(), prefix.encode(), cursor=cursor, limit=limit_of(limit)
        )
        users = await self.batch_get([i.value.decode() for i in items])
        ordered = [users[i.value.decode()] for i in items if i.value.decode() in users]
        return ordered, next_cursor

    # ------------------------------------------------------------------ sessions

    async def _open_session(self, user_id: str) -> str:
        token = secrets.token_urlsafe(32)  # 256 random bits
        await self.kv.put(
            _session_key(token), user_id.encode(), ttl_ms=self.settings.session_ttl_s * 1000
        )
        return token

    async def login(self, handle: str, password: str) -> tuple[pb.User, str]:
        bad = Unauthenticated("wrong handle or password", code="bad_credentials")
        try:
            handle = normalize_handle(handle)
            record = await self._record(await self._id_by(_handle_key(handle)))
        except (InvalidArgument, NotFound):
            await self.hasher.burn()
            raise bad from None
        if not await self.hasher.verify(password, record["password"]):
            raise bad
        return _to_pb(record), await self._open_session(record["id"])

    async def authenticate(self, token: str) -> str:
        if not token or len(token) > 256:
            raise Unauthenticated("invalid token", code="invalid_token")
        item = await self.kv.get(_session_key(token))
        if item is None:
            raise Unauthenticated("invalid or revoked token", code="invalid_token")
        return item.value.decode()

    async def revoke(self, token: str) -> bool:
        if not token or len(token) > 256:
            return False
        key = _session_key(token)
        existed = await self.kv.get(key) is not None
        await self.kv.delete(key)
        return existed
