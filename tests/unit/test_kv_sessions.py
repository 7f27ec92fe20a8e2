"""Exactly-once writes' rules (mt_kv.rules.sessions): the record of a first outcome, and how
old a repeat may be."""

from __future__ import annotations

import pytest
from mt_core.errors import InvalidArgument
from mt_kv.rules.sessions import answer, check_age, record, record_key
from mt_kv_contract.errors import SessionExpired
from mt_proto import kv_pb2 as pb

TTL_MS = 120_000


def _key(name: bytes) -> pb.Key:
    return pb.Key(keyspace="test", partition=b"p", key=name)


def _request(first_sent_ms: int = 1_000_000) -> pb.WriteRequest:
    return pb.WriteRequest(
        mutations=[
            pb.Mutation(key=_key(b"a"), put=pb.Mutation.Put(value=b"big value " * 10)),
            pb.Mutation(key=_key(b"t"), put=pb.Mutation.Put(value=b"v", ttl_ms=5)),
            pb.Mutation(key=_key(b"n"), increment=pb.Mutation.Increment(delta=2)),
            pb.Mutation(key=_key(b"gone"), delete=pb.Mutation.Delete()),
        ],
        session=9,
        session_seq=4,
        first_sent_ms=first_sent_ms,
    )


def test_record__answers_a_repeat_with_the_first_outcome_without_storing_put_values() -> None:
    req = _request()
    results = [
        pb.Item(key=_key(b"a"), found=True, value=b"big value " * 10, version=41),
        pb.Item(key=_key(b"t"), found=True, value=b"v", version=41, expires_at_ms=1_005),
        pb.Item(key=_key(b"n"), found=True, value=b"7", version=41),
        pb.Item(key=_key(b"gone"), found=False, version=41),
    ]
    held = record(3, 40, results, req.mutations)
    assert b"big value" not in held  # the repeat carries it again
    assert len(held) < 40
    response, seq = answer(2, (held, 41, 0), req)
    assert seq == 40
    assert response == pb.WriteResponse(
        version=pb.Version(shard=2, epoch=3, seq=40), results=results
    )


def test_record_key__is_one_per_session_and_number() -> None:
    assert record_key(9, 4) != record_key(9, 5) != record_key(10, 4)


def test_answer__refuses_a_repeat_with_other_mutations() -> None:
    held = record(1, 1, [pb.Item(found=True)], _request().mutations[:1])
    with pytest.raises(InvalidArgument):
        answer(0, (held, 1, 0), _request())


def test_check_age__refuses_a_repeat_older_than_half_the_records_life() -> None:
    sent = 1_000_000
    check_age(_request(sent), sent + TTL_MS // 2, TTL_MS)  # young enough: no error
    with pytest.raises(SessionExpired):
        check_age(_request(sent), sent + TTL_MS // 2 + 1, TTL_MS)


def test_check_age__refuses_a_client_clock_far_ahead() -> None:
    with pytest.raises(InvalidArgument) as ahead:
        check_age(_request(1_000_000 + TTL_MS), 1_000_000, TTL_MS)
    assert ahead.value.code == "clock_skew"
