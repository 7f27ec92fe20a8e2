"""Legacy graph reads, imports and pending follows: copy a legacy account's follows onto the app,
a batch at a time, as batches (layout: :mod:`mt_schema.graph`).

An import is a record (``imports/<user>/<import id>``, with ``imports/<user>/active``) and a
job: the workers' ``import`` kind runs a step per batch of the legacy followees. A step follows
the batch's followees already on the app in ONE write in the importer's partition (edges, list
rows, ``#following``), records the others as pending follows (``graph/pending:<legacy id>/<user
id>``), mirrors the new edges on each followee's side (:meth:`Graph.sync_followers`), and only
then saves its progress — so a step repeated after a crash redoes its batch, and every part of
it is conditional on what is already there: each follow counts once.

When a legacy account joins, the workers' ``join`` kind applies the follows left pending for it
a batch at a time: each follower's side is one conditional write (the KV client sends them as
one BatchWrite per primary), the followee's side one write per 150 followers; the pending rows
go last, so a repeated batch finds them and finishes what it began.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mt_core.errors import NotFound, Unauthenticated
from mt_core.ids import new_id, now_us
from mt_core.paging import decode_cursor, encode_cursor, limit_of
from mt_jobs import Job, Outbox, opportunistic_deadline_ms
from mt_kv_client import KV, ConditionFailed, Key
from mt_kv_client.client import Check, Delete, Mutation, Put
from mt_legacy import LegacyGraph
from mt_legacy.identity import AUDIENCE, Provider
from mt_proto import graph_pb2 as pb
from mt_schema.graph import pending_key
from mt_schema.users import legacy_key

from mt_graph.domain import Graph
from mt_graph.settings import Settings

log = logging.getLogger(__name__)

_STATES = {
    "queued": pb.IMPORT_STATE_QUEUED,
    "running": pb.IMPORT_STATE_RUNNING,
    "done": pb.IMPORT_STATE_DONE,
    "failed": pb.IMPORT_STATE_FAILED,
}


def _record_key(user_id: str, import_id: str) -> Key:
    return Key("imports", user_id.encode(), import_id.encode())


def _active_key(user_id: str) -> Key:
    return Key("imports", user_id.encode(), b"active")


def _to_pb(r: dict[str, Any]) -> pb.Import:
    return pb.Import(
        id=r["id"],
        user_id=r["user_id"],
        legacy_id=r["legacy_id"],
        state=_STATES[r["state"]],
        total=r["total"],
        done=r["done"],
        pending=r["pending"],
        created_at_us=r["created_at_us"],
        updated_at_us=r["updated_at_us"],
        error=r.get("error", ""),
    )


@dataclass(frozen=True)
class Step:
    """One import step's outcome: the record to save once the followees' sides are done."""

    record: dict[str, Any]
    followees: list[str]  # on the app: followed by this step (new or already)
    new: int  # of which this step made the edge


class Legacy:
    def __init__(
        self,
        settings: Settings,
        kv: KV,
        graph: Graph,
        legacy: LegacyGraph,
        outbox: Outbox,
        provider: Provider | None = None,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.graph = graph
        self.legacy = legacy
        self.outbox = outbox
        self.provider = provider

    # ------------------------------------------------------------------ legacy reads

    def account(self, legacy_id: str) -> pb.LegacyAccount:
        a = self.legacy.account(legacy_id)
        return pb.LegacyAccount(
            legacy_id=a.legacy_id, handle=a.handle, following_count=a.following_count
        )

    def following(
        self, legacy_id: str, limit: int, cursor: str
    ) -> tuple[list[pb.LegacyAccountRef], str]:
        numbers = self.legacy.following(legacy_id)
        position = decode_cursor(cursor)
        start = int(position.decode()) if position and position.isdigit() else 0
        end = start + limit_of(limit)
        items = [
            pb.LegacyAccountRef(legacy_id=str(n), handle=self.legacy.handle(n))
            for n in numbers[start:end]
        ]
        return items, encode_cursor(str(end).encode()) if end < len(numbers) else ""

    def assertion(self, legacy_id: str, offered: str, audience: str) -> pb.LegacyAssertion:
        """The legacy identity provider: an assertion for whoever proves the credential."""
        if self.provider is None:
            raise RuntimeError("this process is not the legacy identity provider")
        try:
            self.legacy.number(legacy_id)
        except NotFound:  # the same answer as for a wrong credential
            raise Unauthenticated(
                "wrong legacy account or credential", code="bad_credentials"
            ) from None
        made = self.provider.issue(legacy_id, offered, audience or AUDIENCE)
        return pb.LegacyAssertion(
            assertion=made.token, legacy_id=made.legacy_id, expires_at_us=made.expires_at_s * 10**6
        )

    async def on_app(self, legacy_ids: Sequence[str]) -> dict[str, str]:
        """legacy id -> user id, of those linked to an account."""
        keys = [legacy_key(i) for i in dict.fromkeys(legacy_ids) if i]
        found = await self.kv.multi_get(keys)
        return {k.partition.decode(): v.value.decode() for k, v in found.items() if v is not None}

    # ------------------------------------------------------------------ imports

    async def start_import(self, user_id: str, legacy_id: str) -> pb.Import:
        total = len(self.legacy.following(legacy_id))
        active = await self.kv.get(_active_key(user_id))
        if active is not None:
            record = await self._load(user_id, active.value.decode())
            if record is not None and record["state"] in ("queued", "running"):
                return _to_pb(record)
        at = now_us()
        record = {
            "id": new_id(at),
            "user_id": user_id,
            "legacy_id": legacy_id,
            "state": "queued",
            "total": total,
            "done": 0,
            "pending": 0,
            "created_at_us": at,
            "updated_at_us": at,
        }
        job = Job(
            "import",
            {"user_id": user_id, "import_id": record["id"]},
            key=user_id,
            deadline_ms=opportunistic_deadline_ms(at // 1000),
        )
        where = _record_key(user_id, record["id"])
        staged = self.outbox.stage(where, [job])
        mutations: list[Mutation] = [
            Put(where, json.dumps(record).encode()),
            Put(_active_key(user_id), record["id"].encode()),
            *staged.puts,
        ]
        checks = [
            Check.absent(_active_key(user_id))
            if active is None
            else Check(_active_key(user_id), active.version)
        ]
        try:
            await self.kv.write(mutations, checks)
        except ConditionFailed:
            return await self.start_import(user_id, legacy_id)  # a concurrent start won
        self.outbox.settle_soon(staged)
        return _to_pb(record)

    async def get_import(self, user_id: str, import_id: str) -> pb.Import:
        record = await self._load(user_id, import_id) if user_id and import_id else None
        if record is None:
            raise NotFound("no such import", code="import_not_found")
        return _to_pb(record)

    async def _load(self, user_id: str, import_id: str) -> dict[str, Any] | None:
        item = await self.kv.get(_record_key(user_id, import_id))
        return json.loads(item.value) if item is not None else None

    async def import_step(self, user_id: str, import_id: str) -> Step | None:
        """Follow the next batch's followees on the app (and mirror them), pend the others;
        None if the import is over. The caller finishes the batch's feed and notifications,
        then :meth:`save`s the step."""
        record = await self._load(user_id, import_id) if user_id and import_id else None
        if record is None:
            raise NotFound("no such import", code="import_not_found")
        if record["state"] in ("done", "failed"):
            return None
        numbers = self.legacy.following(record["legacy_id"])
        start = record["done"]
        chunk = [str(n) for n in numbers[start : start + self.settings.import_batch_size]]
        joined = await self.on_app(chunk)
        followees = [u for u in dict.fromkeys(joined.values()) if u != user_id]
        new = await self.graph.follow_many(user_id, followees)
        await self.graph.sync_followees(user_id, followees)
        pending = [lid for lid in chunk if lid not in joined]
        stamp = str(now_us()).encode()
        await self.kv.multi_put([(pending_key(lid, user_id), stamp) for lid in pending])
        record["pending"] += len(pending)
        record["done"] += len(chunk)
        record["state"] = "running" if record["done"] < len(numbers) else "done"
        return Step(record, followees, new)

    async def save(self, step: Step) -> pb.Import:
        record = step.record
        record["updated_at_us"] = now_us()
        await self.kv.put(_record_key(record["user_id"], record["id"]), json.dumps(record).encode())
        if record["state"] == "done":
            await self._forget_active(record["user_id"], record["id"])
        return _to_pb(record)

    async def _forget_active(self, user_id: str, import_id: str) -> None:
        held = await self.kv.get(_active_key(user_id))
        if held is not None and held.value == import_id.encode():
            with contextlib.suppress(ConditionFailed):  # another import is active now
                await self.kv.write(
                    [Delete(_active_key(user_id))], [Check(_active_key(user_id), held.version)]
                )

    # ------------------------------------------------------------------ joins

    async def pending(self, legacy_id: str, limit: int) -> tuple[list[Key], bool]:
        """Up to ``limit`` pending follows of ``legacy_id`` (their rows), and whether more wait."""
        self.legacy.number(legacy_id)
        rows, cursor = await self.kv.scan(
            "graph", f"pending:{legacy_id}".encode(), limit=min(max(limit, 1), 1000)
        )
        return [r.key for r in rows], bool(cursor)

    async def apply_pending(self, followee: str, rows: Sequence[Key]) -> list[str]:
        """Each pending row's user follows ``followee`` (one conditional write per follower,
        sent together) and the followee's side mirrors them; returns the followers. The rows
        stay: the caller removes them (:meth:`forget_pending`) once the rest is done."""
        followers = [r.key.decode() for r in rows if r.key.decode() != followee]
        await self.graph.add_followers(followee, followers)
        await self.graph.sync_followers(followee, followers)
        return followers

    async def forget_pending(self, rows: Sequence[Key]) -> None:
        by_partition: dict[bytes, list[Key]] = {}
        for row in rows:
            by_partition.setdefault(row.partition, []).append(row)
        for part in by_partition.values():  # one partition, one write
            await self.kv.write([Delete(r) for r in part])
