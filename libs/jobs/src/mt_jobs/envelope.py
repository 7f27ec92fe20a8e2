"""The job envelope: what a Kafka record of the job platform carries, and where it goes.

A job is a small JSON document (its kind, payload and delivery metadata) in the record's value;
the record's key is the job's ordering key. Everything a worker needs to decide what to do with
a record — is it due, is it too late, how many times was it tried — travels in the envelope, so
retries and dead letters are ordinary records on ordinary topics.

Topics, per kind: ``jobs.<kind>`` (normal priority), ``jobs.<kind>.high``, ``jobs.<kind>.retry``
(failed attempts waiting out their backoff) and ``jobs.<kind>.dead`` (given up; for operators).
"""

from __future__ import annotations

import enum
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from mt_core import ids
from mt_core.errors import InvalidArgument

ENVELOPE_VERSION = 1
KIND_PATTERN = re.compile(r"[a-z][a-z0-9_-]*")
SUFFIXES = ("", "high", "retry", "dead")

# Headers of a dead-lettered record: why it was given up, and after how many handler runs.
DEAD_REASON_HEADER = "mt-dead-reason"
DEAD_ATTEMPTS_HEADER = "mt-attempts"


class Priority(enum.IntEnum):
    NORMAL = 0
    HIGH = 1


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Job:
    """One unit of asynchronous work. ``id`` stays the same across retries, so handlers can
    use it to apply the job's effect at most once (delivery is at-least-once)."""

    kind: str  # [a-z][a-z0-9_-]*, the topic family
    payload: dict[str, Any] = field(hash=False)  # JSON-serialisable
    key: str = ""  # Kafka message key: ordering per key; default: the id
    id: str = field(default_factory=ids.new_id)
    attempt: int = 0
    priority: Priority = Priority.NORMAL
    not_before_ms: int = 0  # epoch ms; 0 = now. Delivery window start
    deadline_ms: int = 0  # epoch ms; 0 = none. Past it: dead letter, "deadline_exceeded"

    def __post_init__(self) -> None:
        if not KIND_PATTERN.fullmatch(self.kind):
            raise InvalidArgument(f"job kind {self.kind!r} is not [a-z][a-z0-9_-]*", code="kind")
        if not isinstance(self.payload, dict):
            raise InvalidArgument("a job's payload must be a dict", code="payload")
        if self.attempt < 0 or self.not_before_ms < 0 or self.deadline_ms < 0:
            raise InvalidArgument("attempt and times must not be negative", code="job")
        # Accept a plain int for the priority (e.g. from a decoded envelope) but store the enum.
        object.__setattr__(self, "priority", Priority(self.priority))

    @property
    def routing_key(self) -> str:
        """The Kafka record key: the ordering key, or the id when none was given."""
        return self.key or self.id

    def is_due(self, at_ms: int) -> bool:
        return at_ms >= self.not_before_ms

    def is_hopeless(self, at_ms: int) -> bool:
        """True if the deadline has passed, or will have by the time the job is due."""
        return self.deadline_ms > 0 and self.deadline_ms <= max(at_ms, self.not_before_ms)

    def encode(self) -> bytes:
        """The record value; raises TypeError/ValueError if the payload is not JSON."""
        return json.dumps(_as_dict(self), separators=(",", ":"), allow_nan=False).encode()

    @staticmethod
    def decode(raw: bytes) -> Job:
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidArgument(f"not a job envelope: {err}", code="envelope") from None
        return _from_dict(doc)


def _as_dict(job: Job) -> dict[str, Any]:
    return {
        "v": ENVELOPE_VERSION,
        "kind": job.kind,
        "id": job.id,
        "key": job.key,
        "attempt": job.attempt,
        "priority": int(job.priority),
        "not_before_ms": job.not_before_ms,
        "deadline_ms": job.deadline_ms,
        "payload": job.payload,
    }


def _from_dict(doc: Any) -> Job:
    if not isinstance(doc, dict) or doc.get("v") != ENVELOPE_VERSION:
        raise InvalidArgument("not a job envelope (missing or unknown version)", code="envelope")
    try:
        return Job(
            kind=str(doc["kind"]),
            payload=doc["payload"],
            key=str(doc.get("key", "")),
            id=str(doc["id"]),
            attempt=int(doc.get("attempt", 0)),
            priority=Priority(int(doc.get("priority", 0))),
            not_before_ms=int(doc.get("not_before_ms", 0)),
            deadline_ms=int(doc.get("deadline_ms", 0)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise InvalidArgument(f"malformed job envelope: {err!r}", code="envelope") from None


def topic(kind: str, suffix: str = "") -> str:
    """``jobs.<kind>``, or ``jobs.<kind>.<suffix>`` for "high", "retry" and "dead"."""
    if not KIND_PATTERN.fullmatch(kind):
        raise InvalidArgument(f"job kind {kind!r} is not [a-z][a-z0-9_-]*", code="kind")
    if suffix not in SUFFIXES:
        raise InvalidArgument(f"topic suffix {suffix!r} is not one of {SUFFIXES}", code="suffix")
    return f"jobs.{kind}.{suffix}" if suffix else f"jobs.{kind}"
