"""Legacy graph reads, imports and pending follows: copy a legacy account's follows onto the app.

An import is a record (``imports/<user>/<id>``) and a job: the workers' ``import`` kind calls
:meth:`Legacy.import_step` until the import is done, one batch per call. A step follows the
batch's followees already on the app (idempotently) and records the others as pending follows
(``graph/pending:<legacy id>/<user id>``), then saves the progress: a repeated step redoes at
most the batch whose progress was not saved, and the counts are recomputed per batch.

When a legacy account joins, the workers' ``join`` kind calls :meth:`Legacy.apply_pending`
until none are left: each pending row becomes a follow, then goes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mt_core.errors import NotFound
from mt_core.ids import new_id, now_us
from mt_core.paging import decode_cursor, encode_cursor, limit_of
from mt_core.rpc.client import call
from mt_jobs import Job, Outbox, opportunistic_deadline_ms
from mt_kv_client import Key, KVClient
from mt_legacy import LegacyGraph
from mt_proto import graph_pb2 as pb
from mt_proto import users_pb2 as upb
from mt_proto import users_pb2_grpc

from mt_graph.domain import Graph
from mt_graph.settings import Settings

log = logging.getLogger(__name__)

_STATES = {
    "queued": pb.IMPORT_STATE_QUEUED,
    "running": pb.IMPORT_STATE_RUNNING,
    "done": pb.IMPORT_STATE_DONE,
    "failed": pb.IMPORT_STATE_FAILED,
}
ACTIVE = Key("imports", b"active")


def pending_key(legacy_followee: str, user_id: str) -> Key:
    return Key("graph", f"pending:{legacy_followee}".encode(), user_id.encode())


def _record_key(user_id: str, import_id: str) -> Key:
    return Key("imports", user_id.encode(), import_id.encode())


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


class Legacy:
    def __init__(
        self,
        settings: Settings,
        kv: KVClient,
        graph: Graph,
        legacy: LegacyGraph,
        users: users_pb2_grpc.UsersServiceAsyncStub,
        outbox: Outbox,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.graph = graph
        self.legacy = legacy
        self.users = users
        self.outbox = outbox

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

    # ------------------------------------------------------------------ imports

    async def start_import(self, user_id: str, legacy_id: str) -> pb.Import:
        total = len(self.legacy.following(legacy_id))
        active = await self.kv.get(Key("imports", b"active", user_id.encode()))
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
        intent = await self.outbox.intend([job])
        await self._save(record)
        await self.kv.put(Key("imports", b"active", user_id.encode()), record["id"].encode())
        await self.outbox.settle(intent)
        return _to_pb(record)

    async def get_import(self, user_id: str, import_id: str) -> pb.Import:
        record = await self._load(user_id, import_id) if user_id and import_id else None
        if record is None:
            raise NotFound("no such import", code="import_not_found")
        return _to_pb(record)

    async def _load(self, user_id: str, import_id: str) -> dict[str, Any] | None:
        item = await self.kv.get(_record_key(user_id, import_id))
        return json.loads(item.value) if item is not None else None

    async def _save(self, record: dict[str, Any]) -> None:
        record["updated_at_us"] = now_us()
        await self.kv.put(_record_key(record["user_id"], record["id"]), json.dumps(record).encode())

    async def import_step(self, user_id: str, import_id: str) -> pb.Import:
        record = await self._load(user_id, import_id) if user_id and import_id else None
        if record is None:
            raise NotFound("no such import", code="import_not_found")
        if record["state"] in ("done", "failed"):
            return _to_pb(record)
        numbers = self.legacy.following(record["legacy_id"])
        start = record["done"]
        chunk = [str(n) for n in numbers[start : start + self.settings.import_batch_size]]
        if chunk:
            record["pending"] += await self._copy(user_id, chunk)
            record["done"] += len(chunk)
        record["state"] = "running" if record["done"] < len(numbers) else "done"
        await self._save(record)
        if record["state"] == "done":
            await self.kv.delete(Key("imports", b"active", user_id.encode()))
        return _to_pb(record)

    async def apply_pending(self, legacy_id: str, followee_id: str, limit: int) -> tuple[int, bool]:
        """Turn up to ``limit`` pending follows of ``legacy_id`` into follows of ``followee_id``."""
        self.legacy.number(legacy_id)
        rows, cursor = await self.kv.scan(
            "graph", f"pending:{legacy_id}".encode(), limit=min(max(limit, 1), 1000)
        )
        limit_ = asyncio.Semaphore(self.settings.import_concurrency)

        async def apply(follower: str, key: Key) -> None:
            async with limit_:
                if follower != followee_id:
                    await self.graph.follow(follower, followee_id)
                await self.kv.delete(key)

        await asyncio.gather(*(apply(r.key.key.decode(), r.key) for r in rows))
        return len(rows), bool(cursor)

    async def _copy(self, user_id: str, legacy_ids: list[str]) -> int:
        """Follow the ones on the app, record the others as pending; returns how many pend."""
        joined = await call(
            self.users.BatchGetUsersByLegacyId(
                upb.BatchGetUsersByLegacyIdRequest(legacy_ids=legacy_ids)
            )
        )
        on_app = {lid: u.id for lid, u in joined.users.items() if u.id != user_id}
        limit = asyncio.Semaphore(self.settings.import_concurrency)

        async def follow(followee: str) -> None:
            async with limit:
                await self.graph.follow(user_id, followee)

        await asyncio.gather(*(follow(f) for f in on_app.values()))
        pending = [lid for lid in legacy_ids if lid not in joined.users]
        stamp = str(now_us()).encode()
        await self.kv.multi_put([(pending_key(lid, user_id), stamp) for lid in pending])
        return len(pending)
