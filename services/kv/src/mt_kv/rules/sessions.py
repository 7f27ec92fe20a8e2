"""Exactly-once writes (Raft's client sessions, thesis §6.3): the session table's records and
the rule on how old a repeat may be.

A client numbers its writes in a session of its own; the primary logs, in the same entry as a
write's changes, a record of its outcome under (session, seq) — an ordinary key of the KV's
own keyspace with a TTL. So the table is replicated, checkpointed, snapshotted and rebuilt
exactly as the data is: a new primary finds the records of what committed (and, among its
uncommitted tail, of what may yet commit) and a restarted replica reloads them. A request
naming a recorded (session, seq) is not applied again but answered with the first outcome.

μshard moves need nothing more: a repeat goes to the shard its first attempt went to; the
record is there if the write was applied there, and a write sequenced before a μshard's fence
is committed before the fence is, so "no record, and the key has moved" means the first
attempt never took effect — the client may route it afresh.

Records expire (``session_ttl_ms``). A repeat whose first attempt is older than half of that
(the client's wall clock against the primary's: the other half absorbs their difference) is
refused as ``SessionExpired`` — its record may be gone, so it is never applied twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import msgpack
from mt_core.errors import InvalidArgument
from mt_kv_contract.errors import SessionExpired
from mt_proto import kv_pb2 as pb

from mt_kv.data import META_KEYSPACE, Entry, KeyT

SESSIONS: Final = b"session"  # the records' partition in META_KEYSPACE


def record_key(session: int, seq: int) -> KeyT:
    return (META_KEYSPACE, SESSIONS, session.to_bytes(8, "big") + seq.to_bytes(8, "big"))


def record(
    epoch: int, seq: int, results: Sequence[pb.Item], mutations: Sequence[pb.Mutation]
) -> bytes:
    """A write's outcome as its record holds it: the entry it is in, the version it gave, and
    only what a repeat cannot tell by itself — an increment's result, a TTL's expiry (a put's
    value it carries again; a delete found nothing). A write of plain puts: ~20 bytes."""
    extras = {
        i: [r.value if m.HasField("increment") else b"", r.expires_at_ms]
        for i, (r, m) in enumerate(zip(results, mutations, strict=True))
        if m.HasField("increment") or r.expires_at_ms
    }
    version = results[0].version if results else 0
    packed: bytes = msgpack.packb([epoch, seq, version, len(results), extras])
    return packed


def answer(shard: int, held: Entry, req: pb.WriteRequest) -> tuple[pb.WriteResponse, int]:
    """The first outcome of the write ``req`` repeats, and the seq of the entry it is in."""
    epoch, seq, version, count, extras = msgpack.unpackb(held[0], strict_map_key=False)
    if count != len(req.mutations):
        raise InvalidArgument(
            "a repeat of a session's write must carry the same mutations", code="session_reuse"
        )
    results = []
    for i, m in enumerate(req.mutations):
        item = pb.Item(key=m.key, found=not m.HasField("delete"), version=version)
        value, expires = extras.get(i, (b"", 0))
        if item.found:
            item.value = value if m.HasField("increment") else m.put.value
            item.expires_at_ms = expires
        results.append(item)
    at = pb.Version(shard=shard, epoch=epoch, seq=seq)
    return pb.WriteResponse(version=at, results=results), seq


def check_age(req: pb.WriteRequest, now_ms: int, ttl_ms: int) -> None:
    """Refuse a session's write that may repeat one whose record has expired (or whose
    client's clock is too far ahead of ours for the rule to hold)."""
    age_ms = now_ms - req.first_sent_ms
    if age_ms > ttl_ms // 2:
        raise SessionExpired(
            f"write {req.session_seq} of session {req.session:x} was first sent {age_ms} ms "
            f"ago; its first outcome may be forgotten"
        )
    if age_ms < -(ttl_ms // 4):
        raise InvalidArgument(
            f"the client's clock is {-age_ms} ms ahead of the KV's", code="clock_skew"
        )
