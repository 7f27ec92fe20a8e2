"""Accounts, sessions and profiles over the KV service (layout: :mod:`mt_schema.users`).

A handle is claimed with a conditional put, so of concurrent signups for one handle exactly
one wins; a legacy account the same way — and only with its identity provider's assertion
(:mod:`mt_legacy.identity`), whose id is spent in the same write as the claim — and its claim
carries the join job (the outbox row beside it), which therefore exists exactly when the link
was made. An account linked by an assertion may have no password: it logs in with an
assertion, and neither way costs a password hash. Only a token's hash is
stored; deleting it revokes the session at once. The record is written before the claims: an
interrupted signup leaves at worst an unreachable record, never a handle pointing at nothing.

Users are answered with their counts (:mod:`mt_schema.views`). A handle's user id never changes
once claimed (only a signup that lost its other claim gives its handle back, and its record
goes with it), so it is remembered: a profile by handle is one read, not two.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mt_core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from mt_core.ids import new_id, now_us
from mt_core.paging import check_batch, limit_of
from mt_jobs import Job, Outbox, opportunistic_deadline_ms
from mt_kv_client import KV, ConditionFailed, Key
from mt_kv_client.client import Check, Delete, Mutation, Put
from mt_legacy import LegacyGraph
from mt_legacy.identity import LEEWAY_S, Verified, Verifier
from mt_proto import users_pb2 as pb
from mt_schema import views
from mt_schema.users import (
    Handles,
    assertion_key,
    canonical_handle,
    decode,
    handle_key,
    legacy_key,
    session_key,
    session_user,
    to_pb,
    user_key,
)
from mt_schema.views import by_handle

from mt_users import passwords
from mt_users.settings import Settings

HANDLE_PREFIX = re.compile(r"^[a-z0-9_.]{1,30}$")
MAX_DISPLAY_NAME = 64
MAX_BIO = 160


def normalize_handle(raw: str) -> str:
    handle = canonical_handle(raw)
    if handle is None:
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


@dataclass(frozen=True)
class _Claim:
    key: Key  # claimed if absent
    extra: list[Mutation] = field(default_factory=list)  # written with it
    unused: list[Key] = field(default_factory=list)  # must be absent too (a spent assertion)


def _replayed() -> Unauthenticated:
    return Unauthenticated("this legacy assertion was used already", code="assertion_replayed")


def _claim_error(handle: str, proof: Verified | None, outcomes: Sequence[str]) -> Exception:
    if outcomes[0] != "won":
        return AlreadyExists(f"handle {handle!r} is taken", code="handle_taken")
    if outcomes[1] == "spent":
        return _replayed()
    assert proof is not None
    return AlreadyExists(
        f"legacy account {proof.legacy_id} is linked to another user", code="legacy_taken"
    )


class Users:
    def __init__(
        self,
        settings: Settings,
        kv: KV,
        legacy: LegacyGraph,
        outbox: Outbox,
        hasher: passwords.Hasher,
        verifier: Verifier,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.legacy = legacy
        self.outbox = outbox
        self.hasher = hasher
        self.verifier = verifier
        self._handles = Handles(kv, settings.handle_cache_size)

    # ------------------------------------------------------------------ accounts

    async def create_account(
        self,
        handle: str | None,
        password: str,
        display_name: str | None,
        legacy_id: str | None,
        legacy_assertion: str | None = None,
    ) -> tuple[pb.User, str]:
        proof = self._proof(legacy_id, legacy_assertion)
        if proof is not None:
            handle = handle or self.legacy.account(proof.legacy_id).handle
        if not handle:
            raise InvalidArgument(
                "a handle (or a legacy account) is required", code="handle_required"
            )
        handle = normalize_handle(handle)
        if proof is None or password:
            _check_password(password)
        name = _clean_display_name(display_name) if display_name is not None else handle
        if password:  # a hash is not paid for in vain (a signup with an assertion pays none)
            await self._check_free(handle, proof)
        user_id = new_id()
        record: dict[str, Any] = {
            "id": user_id,
            "handle": handle,
            "display_name": name,
            "bio": "",
            "created_at_us": now_us(),
            "legacy_id": proof.legacy_id if proof else None,
            "password": await self.hasher.hash(password) if password else None,
        }
        # Two rounds of writes (a signup holds a new user at the door): the record, then both
        # claims and the session together (a session of a user nothing names opens nothing).
        await self.kv.put(user_key(user_id), json.dumps(record).encode())
        claims = [_Claim(handle_key(handle))]
        staged = None
        if proof is not None:
            # A legacy account joining applies the follows imports left pending for it (the
            # workers' join kind): the job is a row beside the claim, so it exists exactly when
            # the link was made, and is published even if we die right after. The assertion
            # is spent in the same write.
            job = Job(
                "join",
                {"user_id": user_id, "legacy_id": proof.legacy_id},
                key=proof.legacy_id,
                deadline_ms=opportunistic_deadline_ms(now_us() // 1000),
            )
            staged = self.outbox.stage(legacy_key(proof.legacy_id), [job])
            spent = self._spend(proof)
            claims.append(_Claim(legacy_key(proof.legacy_id), [*staged.puts, spent], [spent.key]))
        token = secrets.token_urlsafe(32)  # 256 random bits
        outcomes, _ = await asyncio.gather(
            asyncio.gather(*(self._claim(c, user_id) for c in claims)),
            self._put_session(token, user_id),
        )
        if any(o != "won" for o in outcomes):
            await asyncio.gather(
                *(
                    self._release(c.key, user_id, [m.key for m in c.extra])
                    for c, o in zip(claims, outcomes, strict=True)
                    if o == "won"
                ),
                self.kv.delete(session_key(token)),
            )
            await self.kv.delete(user_key(user_id))  # unreachable: nothing names it
            raise _claim_error(handle, proof, outcomes)
        self._handles.remember(handle, user_id)
        if staged is not None:
            self.outbox.settle_soon(staged)
        return to_pb(record), token

    def _proof(self, legacy_id: str | None, assertion: str | None) -> Verified | None:
        """The legacy account the caller proved to own; a legacy id alone proves nothing."""
        if assertion is None:
            if legacy_id is not None:
                raise Unauthenticated(
                    "linking a legacy account needs its identity provider's assertion",
                    code="assertion_required",
                )
            return None
        proof = self.verifier.verify(assertion)
        if legacy_id is not None and legacy_id != proof.legacy_id:
            raise Unauthenticated(
                "the assertion is for another legacy account", code="assertion_mismatch"
            )
        return proof

    def _spend(self, proof: Verified) -> Put:
        """The row that spends an assertion: kept until it would have expired anyway."""
        ttl_ms = max(1_000, (proof.expires_at_s - int(now_us() / 1e6) + LEEWAY_S) * 1000)
        return Put(assertion_key(proof.legacy_id, proof.jti), b"", ttl_ms)

    async def _check_free(self, handle: str, proof: Verified | None) -> None:
        """Refuse a taken handle or legacy account, or a spent assertion, before paying for
        the password hash (one read for all). Only a fast path: the claims decide any race."""
        keys = [handle_key(handle)]
        if proof is not None:
            keys += [legacy_key(proof.legacy_id), assertion_key(proof.legacy_id, proof.jti)]
        found = await self.kv.multi_get(keys)
        if found[keys[0]] is not None:
            raise AlreadyExists(f"handle {handle!r} is taken", code="handle_taken")
        if proof is not None and found[keys[2]] is not None:
            raise _replayed()
        if proof is not None and found[keys[1]] is not None:
            raise AlreadyExists(
                f"legacy account {proof.legacy_id} is linked to another user", code="legacy_taken"
            )

    async def _claim(self, claim: _Claim, user_id: str) -> str:
        """Put the claim (and its extra rows) if it and the ``unused`` keys are absent:
        "won", "taken" (someone holds the claim) or "spent" (an ``unused`` key exists)."""
        checks = [Check.absent(claim.key), *(Check.absent(k) for k in claim.unused)]
        for attempt in range(20):
            try:
                await self.kv.write([Put(claim.key, user_id.encode()), *claim.extra], checks)
            except ConditionFailed:
                found = await self.kv.multi_get([claim.key, *claim.unused])
                if any(found[k] is not None for k in claim.unused):
                    return "spent"
                if found[claim.key] is not None:
                    return "taken"
                # A competing claim sequenced but never committed (its primary failed).
                await asyncio.sleep(0.005 * (attempt + 1))
                continue
            return "won"
        raise Unavailable(f"{claim.key} is contended; try again", code="contended")

    async def _release(self, key: Key, user_id: str, rows: Sequence[Key]) -> None:
        """Give a claim back (with the job rows beside it), only if it is still ours (version
        unchanged): never free someone else's claim."""
        held = await self.kv.get(key)
        if held is not None and held.value == user_id.encode():
            with contextlib.suppress(ConditionFailed):
                await self.kv.write(
                    [Delete(key), *(Delete(r) for r in rows)], [Check(key, held.version)]
                )

    async def _record(self, user_id: str) -> dict[str, Any]:
        item = await self.kv.get(user_key(user_id)) if user_id else None
        if item is None:
            raise NotFound("no such user", code="user_not_found")
        return decode(item.value)

    async def _id_by(self, key: Key) -> str:
        item = await self.kv.get(key)
        if item is None:
            raise NotFound("no such user", code="user_not_found")
        return item.value.decode()

    async def _view(self, user_id: str) -> pb.User:
        found = await views.users_by_id(self.kv, [user_id]) if user_id else {}
        if user_id not in found:
            raise NotFound("no such user", code="user_not_found")
        return found[user_id]

    async def get_user(self, user_id: str) -> pb.User:
        return await self._view(user_id)

    async def get_by_handle(self, handle: str) -> pb.User:
        user = await by_handle(self.kv, self._handles, handle)
        if user is None:
            raise NotFound("no such user", code="user_not_found")
        return user

    async def get_by_legacy_id(self, legacy_id: str) -> pb.User:
        if not legacy_id:
            raise NotFound("no such user", code="user_not_found")
        return await self._view(await self._id_by(legacy_key(legacy_id)))

    async def batch_get(self, user_ids: Sequence[str]) -> dict[str, pb.User]:
        check_batch(user_ids)
        return await views.users_by_id(self.kv, user_ids)

    async def batch_get_by_legacy(self, legacy_ids: Sequence[str]) -> dict[str, pb.User]:
        check_batch(legacy_ids)
        keys = [legacy_key(i) for i in dict.fromkeys(legacy_ids) if i]
        links = await self.kv.multi_get(keys)
        ids = {k.partition.decode(): v.value.decode() for k, v in links.items() if v is not None}
        users = await views.users_by_id(self.kv, list(ids.values()))
        return {legacy: users[uid] for legacy, uid in ids.items() if uid in users}

    async def update_profile(
        self, user_id: str, display_name: str | None, bio: str | None
    ) -> pb.User:
        name = _clean_display_name(display_name) if display_name is not None else None
        new_bio = _clean_bio(bio) if bio is not None else None
        for _ in range(5):
            item = await self.kv.get(user_key(user_id))
            if item is None:
                raise NotFound("no such user", code="user_not_found")
            record = decode(item.value)
            if name is not None:
                record["display_name"] = name
            if new_bio is not None:
                record["bio"] = new_bio
            try:
                # Compare-and-set on the version read: a concurrent update is retried, not lost.
                await self.kv.write(
                    [Put(user_key(user_id), json.dumps(record).encode())],
                    [Check(user_key(user_id), item.version)],
                )
            except ConditionFailed:
                continue
            return await self._with_counts(record)
        raise FailedPrecondition("profile changed concurrently; try again", code="conflict")

    async def _with_counts(self, record: dict[str, Any]) -> pb.User:
        return (await views.users_by_id(self.kv, [record["id"]], {record["id"]: record}))[
            record["id"]
        ]

    async def search(self, prefix: str, limit: int, cursor: str) -> tuple[list[pb.User], str]:
        prefix = prefix.strip().casefold()
        if not HANDLE_PREFIX.match(prefix):
            raise InvalidArgument("q must be a handle prefix", code="invalid_query")
        items, next_cursor = await self.kv.scan(
            "handles", prefix[:1].encode(), prefix.encode(), cursor=cursor, limit=limit_of(limit)
        )
        ids = [i.value.decode() for i in items]
        return views.ordered(await views.users_by_id(self.kv, ids), ids), next_cursor

    # ------------------------------------------------------------------ sessions

    async def _open_session(self, user_id: str) -> str:
        token = secrets.token_urlsafe(32)  # 256 random bits
        await self._put_session(token, user_id)
        return token

    async def _put_session(self, token: str, user_id: str) -> None:
        await self.kv.put(
            session_key(token), user_id.encode(), ttl_ms=self.settings.session_ttl_s * 1000
        )

    async def login(self, handle: str, password: str) -> tuple[pb.User, str]:
        bad = Unauthenticated("wrong handle or password", code="bad_credentials")
        try:
            handle = normalize_handle(handle)
            record = await self._record(await self._id_by(handle_key(handle)))
        except (InvalidArgument, NotFound):
            await self.hasher.burn()
            raise bad from None
        if not record.get("password"):  # an account that logs in with its legacy identity
            await self.hasher.burn()
            raise bad
        if not await self.hasher.verify(password, record["password"]):
            raise bad
        return await self._with_counts(record), await self._open_session(record["id"])

    async def login_with_assertion(self, assertion: str) -> tuple[pb.User, str]:
        """The account linked to the assertion's legacy account (no password, no hash); the
        assertion is spent."""
        proof = self.verifier.verify(assertion)
        link = await self.kv.get(legacy_key(proof.legacy_id))
        if link is None:
            raise NotFound("no account is linked to this legacy account", code="user_not_found")
        spent = self._spend(proof)
        try:
            await self.kv.write([spent], [Check.absent(spent.key)])
        except ConditionFailed:
            raise _replayed() from None
        record = await self._record(link.value.decode())
        return await self._with_counts(record), await self._open_session(record["id"])

    async def authenticate(self, token: str) -> str:
        user_id = await session_user(self.kv, token)
        if user_id is None:
            raise Unauthenticated("invalid or revoked token", code="invalid_token")
        return user_id

    async def revoke(self, token: str) -> bool:
        if not token or len(token) > 256:
            return False
        key = session_key(token)
        existed = await self.kv.get(key) is not None
        await self.kv.delete(key)
        return existed
