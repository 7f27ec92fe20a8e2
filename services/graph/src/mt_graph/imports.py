"""Legacy graph reads and imports: copy a legacy account's follows onto the app.

An import walks the legacy following list in batches: followees already on the app are
followed (idempotently), the others become pending follows (``graph/pending:<legacy id>/<user
id>``), applied when that legacy account joins. Progress is saved after each batch, so a
restarted service resumes an import from its last saved batch; re-running a batch is harmless
because follows and pending rows are idempotent and the counts are recomputed per batch.

Until the async platform takes this over, imports run as tasks of the graph service,
resumed at start from the ``imports/active`` registry.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from mt_core.errors import MinithreadsError, NotFound
from mt_core.ids import new_id, now_us
from mt_core.paging import decode_cursor, encode_cursor, limit_of
from mt_core.rpc.client import call
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
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.graph = graph
        self.legacy = legacy
        self.users = users
        self._running: dict[str, asyncio.Task[None]] = {}
        self._resumer: asyncio.Task[None] | None = None

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
        await self._save(record)
        await self.kv.put(Key("imports", b"active", user_id.encode()), record["id"].encode())
        self._spawn(record)
        return _to_pb(record)

    async def get_import(self, user_id: str, import_id: str) -> pb.Import:
        record = await self._load(user_id, import_id) if user_id and import_id else None
        if record is None:
            raise NotFound("no such import", code="import_not_found")
        return _to_pb(record)

    def start(self) -> None:
        """Resume, in the background, the imports a previous run left unfinished."""
        self._resumer = asyncio.create_task(self._resume_when_possible(), name="import-resume")

    async def _resume_when_possible(self) -> None:
        while True:
            try:
                await self.resume()
                return
            except MinithreadsError as err:  # the KV not reachable yet: try again shortly
                log.warning("cannot resume imports yet", extra={"reason": err.message})
                await asyncio.sleep(2)

    async def resume(self) -> None:
        cursor = ""
        while True:
            items, cursor = await self.kv.scan("imports", b"active", cursor=cursor, limit=1000)
            for item in items:
                record = await self._load(item.key.key.decode(), item.value.decode())
                if record is not None and record["state"] in ("queued", "running"):
                    self._spawn(record)
            if not cursor:
                return

    async def stop(self) -> None:
        if self._resumer is not None:
            self._resumer.cancel()
        for task in self._running.values():
            task.cancel()
        await asyncio.gather(*self._running.values(), return_exceptions=True)

    def _spawn(self, record: dict[str, Any]) -> None:
        if record["id"] not in self._running:
            task = asyncio.create_task(self._run(record), name=f"import-{record['id']}")
            self._running[record["id"]] = task
            task.add_done_callback(lambda _: self._running.pop(record["id"], None))

    async def _load(self, user_id: str, import_id: str) -> dict[str, Any] | None:
        item = await self.kv.get(_record_key(user_id, import_id))
        return json.loads(item.value) if item is not None else None

    async def _save(self, record: dict[str, Any]) -> None:
        record["updated_at_us"] = now_us()
        await self.kv.put(_record_key(record["user_id"], record["id"]), json.dumps(record).encode())

    async def _run(self, record: dict[str, Any]) -> None:
        try:
            record["state"] = "running"
            await self._save(record)
            numbers = self.legacy.following(record["legacy_id"])
            batch = self.settings.import_batch_size
            while record["done"] < len(numbers):
                chunk = [str(n) for n in numbers[record["done"] : record["done"] + batch]]
                record["pending"] += await self._copy(record["user_id"], chunk)
                record["done"] += len(chunk)
                await self._save(record)
            record["state"] = "done"
            await self._save(record)
            await self.kv.delete(Key("imports", b"active", record["user_id"].encode()))
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.exception("import failed", extra={"import_id": record["id"]})
            record["state"], record["error"] = "failed", str(err)
            await self._save(record)
            await self.kv.delete(Key("imports", b"active", record["user_id"].encode()))

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
