"""The follow graph over the KV service (layout: :mod:`mt_schema.graph`).

A follow is ONE write, in the follower's partition: the edge (``out:``), its list row, the
follower's ``#following`` count and the follow job (the outbox row), conditional on the edge
being absent — so it happens once, its count with it, and its job exists exactly when it did.
The rest is the job's (:meth:`Graph.sync_followers`, then the feed's backfill and the
notification, in the workers): the followee's side is a mirror of the followers' edges, made
equal to them by a write conditional on what the mirror held when read. A mirror step that
runs twice, late, or out of order with the next unfollow still converges: each step copies
what the edge is now, not what its job said.

An unfollow is the same write undone, conditional on the edge's version; its job takes the
followee's side and the follower's inbox back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from mt_core.errors import InvalidArgument, Unavailable
from mt_core.ids import now_us
from mt_core.paging import check_batch, limit_of
from mt_jobs import Job, Outbox
from mt_kv_client import KV, ConditionFailed
from mt_kv_client.client import Check, Delete, Increment, Item, Mutation, Put
from mt_proto import graph_pb2 as pb
from mt_proto import users_pb2 as upb
from mt_schema import views
from mt_schema.graph import (
    KS,
    follower_row,
    followers_count,
    following_count,
    following_row,
    in_key,
    listed_user,
    out_key,
)

SYNC_ATTEMPTS = 8  # a mirror contended this often is left to the next job of its edges
SYNC_CHUNK = 150  # followers mirrored per write (4 mutations and a check each, of 1,000)


def follow_job(op: str, follower: str, followee: str, at_us: int) -> Job:
    """A follow or unfollow happened: mirror it on the followee's side, backfill or clean the
    follower's inbox, notify. Keyed by the follower: one reader's inbox changes in order."""
    payload = {"op": op, "follower": follower, "followee": followee, "at_us": at_us}
    return Job("follow", payload, key=follower)


def follow_mutations(follower: str, followee: str, at_us: int) -> list[Mutation]:
    """The follower's side of a new follow (its write must check the edge is absent)."""
    return [
        Put(out_key(follower, followee), str(at_us).encode()),
        Put(following_row(follower, followee, at_us), b""),
    ]


class Graph:
    def __init__(self, kv: KV, outbox: Outbox) -> None:
        self.kv = kv
        self.outbox = outbox

    async def follow(self, follower: str, followee: str) -> bool:
        _check_ids(follower, followee)
        if follower == followee:
            raise InvalidArgument("you cannot follow yourself", code="cannot_follow_self")
        at_us = now_us()
        edge = out_key(follower, followee)
        staged = self.outbox.stage(edge, [follow_job("follow", follower, followee, at_us)])
        mutations = [
            *follow_mutations(follower, followee, at_us),
            Increment(following_count(follower), 1),
            *staged.puts,
        ]
        try:
            await self.kv.write(mutations, [Check.absent(edge)])
        except ConditionFailed:
            return False  # already following: that follow's job does (or did) the rest
        self.outbox.settle_soon(staged)
        return True

    async def unfollow(self, follower: str, followee: str) -> bool:
        _check_ids(follower, followee)
        edge = out_key(follower, followee)
        held = await self.kv.get(edge)
        if held is None:
            return False
        at_us = int(held.value)
        staged = self.outbox.stage(edge, [follow_job("unfollow", follower, followee, at_us)])
        mutations: list[Mutation] = [
            Delete(edge),
            Delete(following_row(follower, followee, at_us)),
            Increment(following_count(follower), -1),
            *staged.puts,
        ]
        try:
            await self.kv.write(mutations, [Check(edge, held.version)])
        except ConditionFailed:
            return False  # a concurrent unfollow (or re-follow) won; its job does the rest
        self.outbox.settle_soon(staged)
        return True

    # ------------------------------------------------------------------ bulk (imports, joins)

    async def follow_many(self, follower: str, followees: Sequence[str]) -> int:
        """``follower`` follows each of ``followees`` it does not follow yet: ONE write in its
        partition, conditional on each new edge being absent (no jobs: the caller does their
        work for the batch). Returns how many edges it made."""
        _check_ids(follower, *followees)
        followees = [f for f in dict.fromkeys(followees) if f != follower]
        for _ in range(SYNC_ATTEMPTS):
            edges = [out_key(follower, f) for f in followees]
            found = await self.kv.multi_get(edges)
            new = [f for f, e in zip(followees, edges, strict=True) if found[e] is None]
            if not new:
                return 0
            at = now_us()
            mutations = [
                m for i, f in enumerate(new) for m in follow_mutations(follower, f, at + i)
            ]
            mutations.append(Increment(following_count(follower), len(new)))
            try:
                await self.kv.write(mutations, [Check.absent(out_key(follower, f)) for f in new])
            except ConditionFailed:
                continue  # a follow of one of them raced us: read again
            return len(new)
        raise Unavailable("the follows are contended; try again", code="contended")

    async def add_followers(self, followee: str, followers: Sequence[str]) -> int:
        """Each of ``followers`` follows ``followee`` unless it already does: a conditional
        write per follower (its partition), all sent at once — the KV client carries them in
        one BatchWrite per primary. No jobs: the caller does their work for the batch.
        Returns how many edges were made."""
        _check_ids(followee, *followers)
        at = now_us()

        async def one(i: int, follower: str) -> bool:
            mutations = [
                *follow_mutations(follower, followee, at + i),
                Increment(following_count(follower), 1),
            ]
            try:
                await self.kv.write(mutations, [Check.absent(out_key(follower, followee))])
            except ConditionFailed:
                return False  # already following (this batch, repeated): counted then
            return True

        unique = [f for f in dict.fromkeys(followers) if f != followee]
        return sum(await asyncio.gather(*(one(i, f) for i, f in enumerate(unique))))

    # ------------------------------------------------------------------ the followee's side

    async def sync_followees(self, follower: str, followees: Sequence[str]) -> None:
        """:meth:`sync_followers` of one follower on each of ``followees``' sides."""
        await asyncio.gather(*(self.sync_followers(f, [follower]) for f in followees))

    async def sync_followers(self, followee: str, followers: Sequence[str]) -> dict[str, int]:
        """Make ``followee``'s mirror rows (``in:``, ``i:``, ``#followers``) of ``followers``
        equal their edges as they are now: one write in the followee's partition for all of
        them, conditional on the mirror rows it read. Returns the edges it mirrored: follower
        -> follow time, for those that follow."""
        _check_ids(followee, *followers)
        unique = list(dict.fromkeys(followers))
        edges: dict[str, int] = {}
        for start in range(0, len(unique), SYNC_CHUNK):
            edges.update(await self._sync_chunk(followee, unique[start : start + SYNC_CHUNK]))
        return edges

    async def _sync_chunk(self, followee: str, followers: list[str]) -> dict[str, int]:
        for _ in range(SYNC_ATTEMPTS):
            edges = [out_key(f, followee) for f in followers]
            mirrors = [in_key(followee, f) for f in followers]
            found = await self.kv.multi_get([*edges, *mirrors])
            mutations, checks = _mirror_changes(
                followee,
                followers,
                [found[k] for k in edges],
                [found[k] for k in mirrors],
            )
            following = {
                f: int(item.value)
                for f, k in zip(followers, edges, strict=True)
                if (item := found[k]) is not None
            }
            if not mutations:
                return following
            try:
                await self.kv.write(mutations, checks)
            except ConditionFailed:
                continue  # a concurrent step of the same mirror: read again
            return following
        raise Unavailable("the followers' mirror is contended; try again", code="contended")

    # ------------------------------------------------------------------ reads

    async def _list(
        self, user_id: str, prefix: str, limit: int, cursor: str
    ) -> tuple[list[pb.FollowEdge], list[upb.User], str]:
        _check_ids(user_id)
        items, next_cursor = await self.kv.scan(
            KS,
            user_id.encode(),
            prefix.encode(),
            cursor=cursor,
            limit=limit_of(limit),
            reverse=True,
        )
        edges = []
        for item in items:
            other, at_us = listed_user(item.key.key, prefix)
            edges.append(pb.FollowEdge(user_id=other, followed_at_us=at_us))
        ids = [e.user_id for e in edges]
        users = views.ordered(await views.users_by_id(self.kv, ids), ids)
        return edges, users, next_cursor

    async def followers(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.FollowEdge], list[upb.User], str]:
        return await self._list(user_id, "i:", limit, cursor)

    async def following(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.FollowEdge], list[upb.User], str]:
        return await self._list(user_id, "o:", limit, cursor)

    async def is_following(self, viewer: str, targets: Sequence[str]) -> list[str]:
        check_batch(targets)
        _check_ids(viewer, *targets)
        keys = {t: out_key(viewer, t) for t in dict.fromkeys(targets)}
        found = await self.kv.multi_get(keys.values())
        return [t for t, k in keys.items() if found[k] is not None]


def _mirror_changes(
    followee: str,
    followers: Sequence[str],
    edges: Iterable[Item | None],
    mirrors: Iterable[Item | None],
) -> tuple[list[Mutation], list[Check]]:
    """The write that makes each mirror row equal its edge, with the checks that it still
    holds what was read."""
    mutations: list[Mutation] = []
    checks: list[Check] = []
    delta = 0
    for follower, edge, mirror in zip(followers, edges, mirrors, strict=True):
        want = int(edge.value) if edge is not None else None
        have = int(mirror.value) if mirror is not None else None
        if want == have:
            continue
        key = in_key(followee, follower)
        checks.append(Check.absent(key) if mirror is None else Check(key, mirror.version))
        if have is not None:
            mutations.append(Delete(follower_row(followee, follower, have)))
        if want is None:
            mutations.append(Delete(key))
        else:
            mutations += [
                Put(key, str(want).encode()),
                Put(follower_row(followee, follower, want), b""),
            ]
        delta += (want is not None) - (have is not None)
    if delta:
        mutations.append(Increment(followers_count(followee), delta))
    return mutations, checks


def _check_ids(*ids: str) -> None:
    for id_ in ids:
        if not id_ or len(id_) > 64:
            raise InvalidArgument("a user id is required", code="invalid_user_id")
