"""A follower's two decisions on each shard's part of an Append: whether to take it from that
primary at all (epochs and the lease it promised another), and how the entries fit its log
(log matching: Raft §5.3)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import NamedTuple

from mt_kv.rules.log import EPOCH, SEQ, LogRec


class Admission(enum.Enum):
    STALE_EPOCH = "stale_epoch"  # the sender leads an epoch we have left: refuse
    LEASE_WAIT = "lease_wait"  # we promised another primary not to help anyone yet: refuse
    ADOPT = "adopt"  # a new epoch or primary: become its follower, then take the entries
    FOLLOW = "follow"  # the primary we follow: take the entries


def admit(
    *,
    epoch: int,
    primary: str,
    sender_epoch: int,
    sender: str,
    promised_to: str,
    promised_at: float,
    lease_s: float,
    now: float,
) -> Admission:
    """Whether to take an Append of ``sender`` (leading ``sender_epoch``) while we are at
    ``epoch`` following ``primary``, having last acknowledged ``promised_to`` at
    ``promised_at`` (an acknowledgement promises that primary ``lease_s`` of not helping
    another: the lease it serves strong reads under)."""
    if sender_epoch < epoch:
        return Admission.STALE_EPOCH
    if sender_epoch == epoch and sender == primary:
        return Admission.FOLLOW
    if promised_to not in ("", sender) and now < promised_at + lease_s:
        return Admission.LEASE_WAIT
    return Admission.ADOPT


class Fit(NamedTuple):
    """How an Append's entries fit the log: if ``ok``, drop what follows ``truncate_after``
    (None: nothing) and append ``append``; ``durable_hint`` is where the log now matches the
    primary's (if ok) or may (if not: the primary sends from there)."""

    ok: bool
    durable_hint: int
    truncate_after: int | None = None
    append: Sequence[LogRec] = ()


def fit(
    *,
    last_seq: int,
    applied_seq: int,
    epoch_at: Callable[[int], int | None],
    prev_seq: int,
    prev_epoch: int,
    entries: Sequence[LogRec],
) -> Fit:
    """Entries (seq, epoch, payload) that follow ``prev_seq`` of epoch ``prev_epoch`` in the
    primary's log fit ours only if ours has that entry; then an entry we hold of another epoch
    and everything after it go (never committed: a majority held the primary's), and the rest
    is appended. Entries we already hold are kept (a repeated Append changes nothing)."""
    if prev_seq > last_seq:  # a gap: send from our end (or what we applied, if unsure)
        return Fit(False, last_seq if epoch_at(last_seq) is not None else applied_seq)
    if epoch_at(prev_seq) != prev_epoch:
        return Fit(False, applied_seq)
    matched = prev_seq + len(entries)
    for i, entry in enumerate(entries):
        seq, epoch = entry[SEQ], entry[EPOCH]
        if seq > last_seq:
            return Fit(True, matched, None, entries[i:])
        if epoch_at(seq) != epoch:
            return Fit(True, matched, seq - 1, entries[i:])
    return Fit(True, matched)
