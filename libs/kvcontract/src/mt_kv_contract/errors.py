"""What a KV replica answers when it did not do what was asked, as types the client acts on.

A :class:`Refused` request did nothing: sending it again is safe, writes included, once the
routing table is fresh (its subclasses say why). An :class:`Indeterminate` write may or may not
have happened: repeating it is safe only for a write of a client session, which the primary
answers with its first outcome. A lost condition is :class:`ConditionFailed` — an answer,
never retried by the client. :func:`next_step` is the retry rule. Every class is registered with
:mod:`mt_core.errors`, so it crosses gRPC as itself.
"""

from __future__ import annotations

import enum

from mt_core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    MinithreadsError,
    RateLimited,
    Unavailable,
    known,
)


@known
class Refused(Unavailable):
    """The replica did nothing with the request: sending it again is always safe."""

    default_code = "refused"


@known
class NotPrimary(Refused):
    default_code = "not_primary"


@known
class StaleEpoch(Refused):
    """The request was routed with an epoch the shard has left (a failover happened)."""

    default_code = "stale_epoch"


@known
class UnknownShard(Refused):
    default_code = "unknown_shard"


@known
class Behind(Refused):
    """This replica has not applied the version the read must see; another may have."""

    default_code = "behind"


@known
class TooStale(Refused):
    """This replica heard from its primary longer ago than the read's staleness bound."""

    default_code = "too_stale"


@known
class NoQuorum(Refused):
    """The primary could not confirm its lease with a majority: it served nothing."""

    default_code = "no_quorum"


@known
class Moved(Refused):
    """The key's μshard went to another shard (live resharding): route the key again."""

    default_code = "moved"


@known
class Indeterminate(Unavailable):
    """A write whose outcome is unknown: its primary lost its role, or the call broke, after
    the write may have been sequenced. It may yet commit."""

    default_code = "indeterminate"


@known
class SessionExpired(Indeterminate):
    """A repeat of a session's write sent first too long ago: its record of the first outcome
    may have expired, so it was refused rather than risk applying it twice. The outcome of
    the earlier attempts stays unknown."""

    default_code = "session_expired"


@known
class KVUnavailable(Unavailable):
    """Refused until the client's retry budget ran out: nothing was done."""

    default_code = "kv_unavailable"


@known
class ConditionFailed(FailedPrecondition):
    """A check of a conditional write did not hold: nothing was written."""

    default_code = "condition_failed"


@known
class OverQuota(RateLimited):
    """The keyspace is over its quota: nothing was done. Back-pressure for the caller (who
    waits ``retry_after_s``), never retried by the client: a retry would only add load to
    the keyspace that is already over."""

    default_code = "over_quota"


@known
class OverBytesQuota(OverQuota):
    """The keyspace is at its quota of bytes stored: a write that may grow it (a put or an
    increment) is refused until deletes free enough; deletes pass."""

    default_code = "over_bytes_quota"


class Step(enum.Enum):
    """What the client does after a failed attempt (:func:`next_step`)."""

    AGAIN = "again"  # send it again, on a fresh routing table
    ROUTE_AGAIN = "route_again"  # its μshard moved: route its keys afresh (see _rerouting)
    UNKNOWN = "unknown"  # a write that may have happened: the caller gets Indeterminate
    ANSWER = "answer"  # the error is the answer (a lost condition, a bad request...)


def next_step(error: MinithreadsError, *, idempotent: bool) -> Step:
    """THE retry rule: what to do after ``error``, for a call that is (or is not) safe to
    repeat when its outcome is unknown — a read, or a write carrying its session and number
    (the primary answers a repeat with the first outcome)."""
    if isinstance(error, SessionExpired):
        return Step.UNKNOWN
    if isinstance(error, RateLimited):  # back-pressure is the caller's to honour
        return Step.ANSWER
    if isinstance(error, Moved):
        return Step.ROUTE_AGAIN
    if isinstance(error, Refused):
        return Step.AGAIN
    if isinstance(error, Unavailable | DeadlineExceeded):
        return Step.AGAIN if idempotent else Step.UNKNOWN
    return Step.ANSWER
