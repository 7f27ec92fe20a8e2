"""The job envelope and topic names: what goes on the wire must come back the same."""

from __future__ import annotations

import dataclasses

import pytest
from mt_core.errors import InvalidArgument
from mt_jobs import Job, Priority, topic
from mt_jobs.producer import default_topic


def test_job__round_trips_every_field() -> None:
    job = Job(
        "fan-out_2",
        {"post": "p1", "n": [1, 2.5, None], "nested": {"ok": True}},
        key="author-7",
        attempt=3,
        priority=Priority.HIGH,
        not_before_ms=1_700_000_000_000,
        deadline_ms=1_700_000_060_000,
    )
    back = Job.decode(job.encode())
    assert back == job
    assert back.priority is Priority.HIGH


def test_job__defaults_key_the_record_by_its_id_and_keeps_the_id_across_retries() -> None:
    job = Job("counters", {"x": 1})
    assert job.key == ""
    assert job.routing_key == job.id
    retry = dataclasses.replace(job, attempt=1, not_before_ms=5)
    assert retry.id == job.id
    assert Job("counters", {}, key="k").routing_key == "k"


@pytest.mark.parametrize("kind", ["", "Upper", "9lives", "has.dot", "sp ace"])
def test_job__rejects_kinds_that_are_not_topic_families(kind: str) -> None:
    with pytest.raises(InvalidArgument):
        Job(kind, {})


@pytest.mark.parametrize(
    "raw", [b"not json", b"[]", b'{"v": 2, "kind": "a", "id": "x", "payload": {}}', b'{"v": 1}']
)
def test_decode__rejects_what_is_not_an_envelope(raw: bytes) -> None:
    with pytest.raises(InvalidArgument):
        Job.decode(raw)


def test_encode__refuses_payloads_that_are_not_json() -> None:
    with pytest.raises(TypeError):
        Job("a", {"when": object()}).encode()
    with pytest.raises(ValueError, match="JSON"):
        Job("a", {"x": float("nan")}).encode()


def test_windows__due_and_hopeless() -> None:
    job = Job("a", {}, not_before_ms=1_000, deadline_ms=2_000)
    assert not job.is_due(999)
    assert job.is_due(1_000)
    assert not job.is_hopeless(1_999)
    assert job.is_hopeless(2_000)
    # A deadline before the window opens can never be met: no point in waiting for it.
    assert Job("a", {}, not_before_ms=3_000, deadline_ms=2_000).is_hopeless(0)
    assert not Job("a", {}).is_hopeless(10**15)


def test_topic__names_each_family_member() -> None:
    assert topic("feed") == "jobs.feed"
    assert [topic("feed", s) for s in ("high", "retry", "dead")] == [
        "jobs.feed.high",
        "jobs.feed.retry",
        "jobs.feed.dead",
    ]
    with pytest.raises(InvalidArgument):
        topic("feed", "later")
    assert default_topic(Job("feed", {}, priority=Priority.HIGH)) == "jobs.feed.high"
    assert default_topic(Job("feed", {})) == "jobs.feed"
