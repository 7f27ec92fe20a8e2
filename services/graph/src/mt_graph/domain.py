"""The follow graph over the KV service.

Layout, in keyspace ``graph`` (partition = the user the rows belong to):
- ``out:<followee>`` -> follow time: the edge, the idempotency check of Follow;
- ``o:<time><followee>``: whom the user follows, newest first by a reverse scan;
- ``in:<follower>`` and ``i:<time><follower>``: the same from the followee's side.

Events (inbox backfill or removal, notifications) go through the outbox, recorded before the
edge is written. A follow first writes the follower's side atomically (one partition, one
shard: edge + list row, conditional on the edge being absent), then the followee's side and
the counters, whose keys are derived from the follow time. Re-running a follow therefore
completes whatever an interrupted one left undone and never double-counts: the counter deltas
carry an idempotency key made of the same follow time.
"""

from __future__ import annotations

from collections.abc import Sequence

from mt_core.errors import FailedPrecondition, InvalidArgument
from mt_core.ids import now_us
from mt_core.paging import check_batch, limit_of
from mt_core.rpc.client import call
from mt_jobs import Job, Outbox
from mt_kv_client import Key, KVClient
from mt_kv_client.client import Check, Delete, Put
from mt_proto import counters_pb2 as cpb
from mt_proto import counters_pb2_grpc
from mt_proto import graph_pb2 as pb

KS = "graph"
# A repeated follow re-runs the follow's later steps (in case the first run was cut short)
# while it is this young: well inside the counters' 24 h idempotency memory.
REPAIR_WINDOW_US = 3600 * 1_000_000


def _key(user_id: str, suffix: str) -> Key:
    return Key(KS, user_id.encode(), suffix.encode())


def _time_hex(at_us: int) -> str:
    return f"{at_us:016x}"


def follow_job(op: str, follower: str, followee: str, at_us: int) -> Job:
    """The event of a follow or unfollow, handled by the workers' ``follow`` kind (inbox
    backfill or removal, the follow notification). Keyed by the follower: one reader's inbox
    changes in order."""
    payload = {"op": op, "follower": follower, "followee": followee, "at_us": at_us}
    return Job("follow", payload, key=follower)


class Graph:
    def __init__(
        self,
        kv: KVClient,
        counters: counters_pb2_grpc.CountersServiceAsyncStub,
        outbox: Outbox,
    ) -> None:
        self.kv = kv
        self.counters = counters
        self.outbox = outbox

    async def follow(self, follower: str, followee: str) -> bool:
        _check_ids(follower, followee)
        if follower == followee:
            raise InvalidArgument("you cannot follow yourself", code="cannot_follow_self")
        edge = _key(follower, f"out:{followee}")
        at_us = now_us()
        # The event first (backfill, notification): if we die after the edge is written, the
        # outbox relay still publishes it; if we die before, its handler finds no edge.
        intent = await self.outbox.intend([follow_job("follow", follower, followee, at_us)])
        listed = Put(_key(follower, f"o:{_time_hex(at_us)}{followee}"), b"")
        changed, held = await self.kv.claim(edge, str(at_us).encode(), extra=[listed])
        if not changed:
            at_us = int(held.value)
            if now_us() - at_us > REPAIR_WINDOW_US:
                await self.outbox.cancel(intent)  # nothing new to announce
                return False  # long complete; and its counter dedup keys may have expired
        await self._complete_follow(follower, followee, at_us)
        await self.outbox.settle(intent)
        return changed

    async def _complete_follow(self, follower: str, followee: str, at_us: int) -> None:
        stamp = _time_hex(at_us)
        await self.kv.multi_put(
            [
                (_key(followee, f"in:{follower}"), str(at_us).encode()),
                (_key(followee, f"i:{stamp}{follower}"), b""),
            ]
        )
        await self._count(follower, followee, +1, f"follow:{follower}:{followee}:{at_us}")

    async def _count(self, follower: str, followee: str, delta: int, idempotency_key: str) -> None:
        await call(
            self.counters.Increment(
                cpb.IncrementRequest(
                    deltas=[
                        cpb.CounterDelta(
                            key=cpb.CounterKey(kind=cpb.COUNTER_KIND_FOLLOWING, entity_id=follower),
                            delta=delta,
                        ),
                        cpb.CounterDelta(
                            key=cpb.CounterKey(kind=cpb.COUNTER_KIND_FOLLOWERS, entity_id=followee),
                            delta=delta,
                        ),
                    ],
                    idempotency_key=idempotency_key,
                )
            )
        )

    async def unfollow(self, follower: str, followee: str) -> bool:
        _check_ids(follower, followee)
        edge = _key(follower, f"out:{followee}")
        held = await self.kv.get(edge)
        if held is None:
            return False
        intent = await self.outbox.intend([follow_job("unfollow", follower, followee, now_us())])
        at_us = int(held.value)
        stamp = _time_hex(at_us)
        try:
            await self.kv.write(
                [Delete(edge), Delete(_key(follower, f"o:{stamp}{followee}"))],
                [Check(edge, held.version)],
            )
        except FailedPrecondition:
            await self.outbox.cancel(intent)
            return False  # a concurrent unfollow (or re-follow) won; it completes its own work
        await self.kv.write(
            [
                Delete(_key(followee, f"in:{follower}")),
                Delete(_key(followee, f"i:{stamp}{follower}")),
            ]
        )
        await self._count(follower, followee, -1, f"unfollow:{follower}:{followee}:{at_us}")
        await self.outbox.settle(intent)
        return True

    async def _list(
        self, user_id: str, prefix: str, limit: int, cursor: str
    ) -> tuple[list[pb.FollowEdge], str]:
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
            rest = item.key.key.decode()[len(prefix) :]
            edges.append(pb.FollowEdge(user_id=rest[16:], followed_at_us=int(rest[:16], 16)))
        return edges, next_cursor

    async def followers(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.FollowEdge], str]:
        return await self._list(user_id, "i:", limit, cursor)

    async def following(
        self, user_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.FollowEdge], str]:
        return await self._list(user_id, "o:", limit, cursor)

    async def all_following(self, user_id: str) -> list[str]:
        """Every followee of ``user_id`` (internal callers: feed assembly, imports)."""
        found: list[str] = []
        cursor = ""
        while True:
            page, cursor = await self.following(user_id, 1000, cursor)
            found += [e.user_id for e in page]
            if not cursor:
                return found

    async def is_following(self, viewer: str, targets: Sequence[str]) -> list[str]:
        check_batch(targets)
        _check_ids(viewer, *targets)
        keys = {t: _key(viewer, f"out:{t}") for t in dict.fromkeys(targets)}
        found = await self.kv.multi_get(keys.values())
        return [t for t, k in keys.items() if found[k] is not None]


def _check_ids(*ids: str) -> None:
    for id_ in ids:
        if not id_ or len(id_) > 64:
            raise InvalidArgument("a user id is required", code="invalid_user_id")
