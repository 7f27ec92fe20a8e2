"""The KV's replication rules as scripted scenarios, without processes, clock or store."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from mt_kv.rules.follow import Admission, Fit, admit, fit
from mt_kv.rules.log import EPOCH, SEQ, LogRec
from mt_kv.rules.membership import allowed
from mt_kv.rules.progress import Progress
from mt_kv.rules.quorum import LEASE_SAFETY, commit_point, lease_until
from mt_kv.rules.shard import Reset, Role, ShardCore
from mt_proto import kv_pb2 as pb

HOLD_S = 0.05


def test_progress__a_probe_waits_for_its_answer_then_entries_stream() -> None:
    p = Progress(next_seq=5)
    assert p.may_send(now=0.0)
    p.sent(7)
    assert (p.next_seq, p.probe_out) == (8, True)
    assert not p.may_send(now=0.0)  # one probe at a time
    p.acknowledged(7, sent_at=1.0, gen=p.gen)
    assert (p.probing, p.match_seq, p.acked_at) == (False, 7, 1.0)
    p.sent(9)
    p.sent(12)
    assert p.may_send(now=0.0)  # streaming: requests go ahead of their answers
    assert p.next_seq == 13


def test_progress__answers_from_before_a_rewind_do_not_steer_it() -> None:
    p = Progress(next_seq=10, probing=False)
    p.sent(12)
    stale = p.gen
    p.mismatched(4, gen=stale, now=0.0, hold_s=HOLD_S)  # the first refusal rewinds...
    assert (p.next_seq, p.probing) == (5, True)
    p.mismatched(2, gen=stale, now=0.0, hold_s=HOLD_S)  # ...a second one of that stream not
    assert p.next_seq == 5
    p.acknowledged(12, sent_at=0.5, gen=stale)  # durable is durable, but still probing
    assert (p.match_seq, p.probing) == (12, True)


def test_progress__the_same_hint_twice_holds_the_probe_until_the_next_tick() -> None:
    p = Progress(next_seq=10)
    p.mismatched(3, gen=p.gen, now=1.0, hold_s=HOLD_S)
    assert p.may_send(now=1.0)
    p.sent(None)
    p.mismatched(3, gen=p.gen, now=1.0, hold_s=HOLD_S)  # e.g. it is copying a snapshot
    assert not p.may_send(now=1.0 + HOLD_S / 2)
    assert p.may_send(now=1.0 + HOLD_S)


def test_progress__a_lease_refusal_asks_again_from_the_same_place_later() -> None:
    p = Progress(next_seq=10, probing=False)
    p.sent(15)
    p.lease_refused(prev_seq=9, gen=p.gen, now=2.0, hold_s=HOLD_S)
    assert (p.next_seq, p.probing) == (10, True)
    assert not p.may_send(now=2.0)
    assert p.may_send(now=2.0 + HOLD_S)


@pytest.mark.parametrize(("match_seq", "expected"), [(0, 21), (8, 9)])
def test_progress__a_lost_link_probes_from_what_is_known(match_seq: int, expected: int) -> None:
    p = Progress(next_seq=30, match_seq=match_seq, probing=False)
    p.link_lost(last_seq=20)
    assert (p.next_seq, p.probing, p.probe_out) == (expected, True, False)


def _epochs(*spans: tuple[int, int, int]) -> dict[int, int]:
    """seq -> epoch from (first seq, last seq, epoch) spans."""
    return {seq: epoch for first, last, epoch in spans for seq in range(first, last + 1)}


def test_commit__needs_a_majority_of_the_voters() -> None:
    epochs = _epochs((1, 9, 1))
    assert commit_point(0, [5, 0, 0], 3, 1, epochs.get) == 0  # only we hold it
    assert commit_point(0, [5, 3, 0], 3, 1, epochs.get) == 3
    assert commit_point(0, [9, 9, 4, 4, 0], 5, 1, epochs.get) == 4
    assert commit_point(0, [9, 9, 0, 0, 0], 5, 1, epochs.get) == 0


def test_commit__an_older_epochs_entry_commits_only_under_one_of_ours() -> None:
    epochs = _epochs((1, 5, 1), (6, 7, 2))  # 1-5 inherited from epoch 1; we lead epoch 2
    assert commit_point(0, [7, 5, 5], 3, 2, epochs.get) == 0  # a majority holds 5: not enough
    assert commit_point(0, [7, 6, 5], 3, 2, epochs.get) == 6  # 6 is ours: 1-6 commit with it


def test_commit__never_goes_back() -> None:
    assert commit_point(7, [5, 5, 5], 3, 1, _epochs((1, 9, 1)).get) == 7


def test_lease__runs_from_the_oldest_needed_acknowledgement_and_never_shrinks() -> None:
    lease = 1.0
    assert lease_until(0.0, [10.0, 0.0], 3, lease) == pytest.approx(10.0 + LEASE_SAFETY)
    assert lease_until(0.0, [10.0, 8.0, 0.0, 0.0], 5, lease) == pytest.approx(8.0 + LEASE_SAFETY)
    assert lease_until(0.0, [10.0], 5, lease) == 0.0  # one follower of the two needed
    assert lease_until(20.0, [10.0, 9.0], 3, lease) == 20.0
    assert lease_until(0.0, [], 1, lease) == 0.0  # alone: no one promised anything


def _admit(**changes: object) -> Admission:
    situation: dict[str, Any] = {
        "epoch": 3,
        "primary": "a",
        "sender_epoch": 3,
        "sender": "a",
        "promised_to": "a",
        "promised_at": 10.0,
        "lease_s": 1.0,
        "now": 10.5,
    }
    situation.update(changes)
    return admit(**situation)


def test_admit__follows_its_primary_and_refuses_an_older_epoch() -> None:
    assert _admit() is Admission.FOLLOW
    assert _admit(sender_epoch=2) is Admission.STALE_EPOCH
    assert _admit(sender_epoch=2, sender="b") is Admission.STALE_EPOCH


def test_admit__a_new_primary_waits_out_the_lease_promised_to_the_old() -> None:
    assert _admit(sender_epoch=4, sender="b") is Admission.LEASE_WAIT
    assert _admit(sender_epoch=4, sender="b", now=11.0) is Admission.ADOPT
    assert _admit(sender_epoch=4, sender="a") is Admission.ADOPT  # the same one, re-elected
    assert _admit(sender_epoch=4, sender="b", promised_to="") is Admission.ADOPT


def _log(*epochs: int) -> Callable[[int], int | None]:
    """epoch_at of a log whose entries 1.. have ``epochs`` (0: the empty prefix)."""
    return lambda seq: [0, *epochs][seq] if 0 <= seq <= len(epochs) else None


def _entries(first: int, *epochs: int) -> list[LogRec]:
    return [(first + i, epoch, b"") for i, epoch in enumerate(epochs)]


def test_fit__appends_what_follows_a_matching_entry() -> None:
    fitted = fit(
        last_seq=3,
        applied_seq=3,
        epoch_at=_log(1, 1, 1),
        prev_seq=3,
        prev_epoch=1,
        entries=_entries(4, 1, 2),
    )
    assert fitted == Fit(True, 5, None, _entries(4, 1, 2))


def test_fit__a_repeated_append_changes_nothing() -> None:
    fitted = fit(
        last_seq=5,
        applied_seq=3,
        epoch_at=_log(1, 1, 1, 1, 2),
        prev_seq=3,
        prev_epoch=1,
        entries=_entries(4, 1, 2),
    )
    assert fitted == Fit(True, 5)


def test_fit__an_entry_of_another_epoch_goes_with_everything_after_it() -> None:
    # Our 4-6 were never committed (epoch 2's primary died); epoch 3's primary has its own 5.
    fitted = fit(
        last_seq=6,
        applied_seq=3,
        epoch_at=_log(1, 1, 1, 2, 2, 2),
        prev_seq=3,
        prev_epoch=1,
        entries=_entries(4, 2, 3),
    )
    assert fitted == Fit(True, 5, 4, _entries(5, 3))


def test_fit__a_gap_or_a_different_history_is_refused_with_where_to_resume() -> None:
    gap = fit(
        last_seq=3,
        applied_seq=2,
        epoch_at=_log(1, 1, 1),
        prev_seq=7,
        prev_epoch=1,
        entries=_entries(8, 1),
    )
    assert gap == Fit(False, 3)
    other = fit(
        last_seq=4,
        applied_seq=2,
        epoch_at=_log(1, 1, 2, 2),
        prev_seq=4,
        prev_epoch=3,
        entries=_entries(5, 3),
    )
    assert other == Fit(False, 2)


def _ok(durable_seq: int) -> pb.ShardAppendResult:
    return pb.ShardAppendResult(status=pb.ShardAppendResult.OK, durable_seq=durable_seq)


def _primary(now: float = 100.0) -> ShardCore:
    shard = ShardCore(0, me="a", replicas=("a", "b", "c"))
    shard.reset(Role.FOLLOWER, 1, "", now, lease_s=1.0)
    shard.reset(Role.PRIMARY, 1, "a", now, lease_s=1.0)
    return shard


def test_shard__a_new_primary_honours_the_lease_promised_to_the_old_one() -> None:
    shard = ShardCore(0, me="b", replicas=("a", "b", "c"))
    shard.reset(Role.FOLLOWER, 1, "a", 0.0, lease_s=1.0)
    shard.acknowledged("a", 10.0)
    shard.reset(Role.FOLLOWER, 2, "", 10.2, lease_s=1.0)
    reset = shard.reset(Role.PRIMARY, 2, "b", 10.3, lease_s=1.0)
    assert reset == Reset(stepped_down=False, moved=True)
    assert shard.serving_after == pytest.approx(11.0)
    assert set(shard.progress) == {"a", "c"}
    assert not shard.may_serve_strong(10.5)


def test_shard__commits_once_a_majority_holds_an_entry_of_its_epoch() -> None:
    shard = _primary()
    first = shard.propose(b"w1")
    assert shard.unpersisted == [first]
    shard.persisted(first[SEQ], first[EPOCH])
    assert shard.advance_commit() == 0  # only we hold it
    msg, sent = shard.append_for(shard.progress["b"], max_entries=100)
    assert (msg.prev_seq, sent) == (0, [first])
    shard.progress["b"].sent(first[SEQ])
    shard.on_result(
        shard.progress["b"],
        _ok(1),
        gen=0,
        prev_seq=0,
        sent_at=100.0,
        now=100.1,
        lease_s=1.0,
        hold_s=0.05,
    )
    assert shard.advance_commit() == 1
    assert shard.may_serve_strong(100.5)  # b's acknowledgement: a majority, for 0.9 s
    assert not shard.may_serve_strong(101.0)


def test_shard__stepping_down_drops_what_only_a_primary_keeps() -> None:
    shard = _primary()
    sequenced = shard.propose(b"w1")
    later = pb.ShardAppendResult(status=pb.ShardAppendResult.STALE_EPOCH, epoch=2)
    assert shard.on_result(
        shard.progress["b"],
        later,
        gen=0,
        prev_seq=0,
        sent_at=100.0,
        now=100.1,
        lease_s=1.0,
        hold_s=0.05,
    )
    reset = shard.reset(Role.FOLLOWER, 2, "", 100.2, lease_s=1.0)
    assert reset == Reset(stepped_down=True, moved=True)
    assert (shard.progress, shard.lease_until) == ({}, 0.0)
    # Still in the log, never stored: the follower's next transaction must take it.
    assert shard.unpersisted == [sequenced]
    shard.truncate_after(0)  # (unless the new primary's log replaces it)
    assert shard.unpersisted == []


def test_shard__a_follower_replaces_an_uncommitted_tail_of_another_epoch() -> None:
    shard = ShardCore(0, me="b", replicas=("a", "b", "c"))
    shard.reset(Role.FOLLOWER, 1, "a", 0.0, lease_s=1.0)
    assert shard.fit(pb.ShardAppend(prev_seq=0, prev_epoch=0), tuple(_entries(1, 1, 1, 1))).ok
    shard.reset(Role.FOLLOWER, 2, "c", 5.0, lease_s=1.0)
    assert shard.admission("c", 2, 5.0, lease_s=1.0) is Admission.FOLLOW
    fitted = shard.fit(pb.ShardAppend(prev_seq=2, prev_epoch=1), tuple(_entries(3, 2)))
    assert fitted == Fit(True, 3, 2, tuple(_entries(3, 2)))
    assert [e[EPOCH] for e in shard.tail] == [1, 1, 2]


def test_shard__reports_its_log_only_as_far_as_it_is_synced() -> None:
    shard = ShardCore(0, me="b", replicas=("a", "b", "c"))
    shard.reset(Role.FOLLOWER, 1, "a", 0.0, lease_s=1.0)
    shard.fit(pb.ShardAppend(prev_seq=0, prev_epoch=0), tuple(_entries(1, 1, 1, 1)))
    assert shard.reported() == (0, 0)  # appended, not yet synced: a crash could lose them
    shard.persisted(3, 1)
    assert shard.reported() == (1, 3)
    shard.reset(Role.FOLLOWER, 2, "c", 5.0, lease_s=1.0)
    shard.fit(pb.ShardAppend(prev_seq=1, prev_epoch=1), tuple(_entries(2, 2)))
    assert shard.reported() == (1, 1)  # entries 2-3 of epoch 1 are gone from our log
    shard.persisted(3, 1)  # a sync of the log as it was before: not of these entries
    assert shard.reported() == (1, 1)
    shard.persisted(2, 2)
    assert shard.reported() == (2, 2)


def test_shard__never_trims_an_entry_the_store_has_not_been_given() -> None:
    shard = _primary()
    for n in range(6):
        shard.propose(b"w%d" % n)
    shard.applied_seq = shard.commit_seq = 4  # (committed through the followers' copies)
    shard.unpersisted = shard.unpersisted[3:]  # 1-3 stored; 4-6 not yet
    assert shard.trim(keep_entries=0) == 3
    assert shard.tail_start == 4


def test_shard__never_leads_again_an_epoch_it_knew_before_a_restart() -> None:
    # make sim seed 8824: a power loss took a new primary's unsynced entries; restarted, it was
    # still the manager's primary of that epoch and led it again, giving seq 46 a second entry.
    shard = ShardCore(0, me="b", replicas=("a", "b", "c"), epoch=2, restarted_in=2)
    assert not shard.may_lead(2)
    assert shard.may_lead(3)


# ---------------------------------------------------------------- membership


@pytest.mark.parametrize(
    ("stable", "current", "proposed", "ok"),
    [
        ("abc", "abc", "abcd", True),  # grow by one
        ("abcd", "abcd", "bcd", True),  # then shrink by one
        ("abc", "abc", "bcd", False),  # a swap in one step: majorities need not meet
        ("abc", "abcd", "bcd", False),  # a swap in two, the first not yet established
        ("abc", "abcd", "abc", True),  # back to the established set (a rollback)
        ("a", "a", "", False),  # never no voter
    ],
)
def test_membership__one_member_apart_from_the_established_and_the_published(
    stable: str, current: str, proposed: str, ok: bool
) -> None:
    assert allowed(set(stable), set(current), set(proposed)) is ok


def _ack(shard: ShardCore, follower: str, durable_seq: int, sent_at: float) -> None:
    shard.on_result(
        shard.progress[follower],
        _ok(durable_seq),
        gen=shard.progress[follower].gen,
        prev_seq=0,
        sent_at=sent_at,
        now=sent_at,
        lease_s=1.0,
        hold_s=0.05,
    )


def test_shard__a_learner_is_sent_the_log_but_counts_for_neither_commit_nor_lease() -> None:
    shard = _primary()
    shard.set_members(("a", "b", "c"), ("d",))
    assert set(shard.progress) == {"b", "c", "d"}
    first = shard.propose(b"w1")
    shard.persisted(first[SEQ], first[EPOCH])
    _ack(shard, "d", 1, 100.0)
    assert shard.advance_commit() == 0
    assert not shard.may_serve_strong(100.1)
    _ack(shard, "b", 1, 100.0)
    assert shard.advance_commit() == 1
    assert shard.may_serve_strong(100.1)


def test_shard__four_voters_commit_with_three_and_lease_with_two_followers() -> None:
    shard = _primary()
    shard.set_members(("a", "b", "c", "d"), ())
    first = shard.propose(b"w1")
    shard.persisted(first[SEQ], first[EPOCH])
    _ack(shard, "b", 1, 100.0)
    assert shard.advance_commit() == 0
    assert not shard.may_serve_strong(100.1)
    _ack(shard, "d", 1, 100.0)
    assert shard.advance_commit() == 1
    assert shard.may_serve_strong(100.1)


def test_shard__a_learner_never_leads() -> None:
    shard = ShardCore(0, me="d", replicas=("a", "b", "c"), learners=("d",))
    shard.reset(Role.FOLLOWER, 1, "", 0.0, lease_s=1.0)
    with pytest.raises(AssertionError):
        shard.reset(Role.PRIMARY, 1, "d", 0.0, lease_s=1.0)


def test_shard__continuing_in_place_keeps_the_log_and_progress_and_relearns_the_lease() -> None:
    shard = _primary()
    first = shard.propose(b"w1")
    shard.persisted(first[SEQ], first[EPOCH])
    _ack(shard, "b", 1, 100.0)
    assert shard.may_serve_strong(100.1)
    shard.set_members(("a", "c", "d"), ())  # b removed (from {a,b,c,d}, established)
    reset = shard.reset(Role.PRIMARY, 2, "a", 100.2, lease_s=1.0, continues=True)
    assert reset == Reset(stepped_down=False, moved=True)
    assert (shard.epoch, shard.led_from, shard.role) == (2, 1, Role.PRIMARY)
    assert set(shard.progress) == {"c", "d"}
    assert shard.tail == [first]
    # b's promise binds nobody the voters {a, c, d} may elect: no lease until c or d acks.
    assert not shard.may_serve_strong(100.3)
    _ack(shard, "c", 1, 100.3)
    assert shard.may_serve_strong(100.4)


def test_shard__an_append_of_the_epoch_continued_is_sent_again_in_the_new_one() -> None:
    shard = _primary()
    shard.propose(b"w1")
    progress = shard.progress["b"]
    progress.sent(1)
    shard.reset(Role.PRIMARY, 2, "a", 100.0, lease_s=1.0, continues=True)
    stale = pb.ShardAppendResult(status=pb.ShardAppendResult.STALE_EPOCH, epoch=2)
    later = shard.on_result(
        progress, stale, gen=0, prev_seq=0, sent_at=100.0, now=100.1, lease_s=1.0, hold_s=0.05
    )
    assert not later
    assert (progress.next_seq, progress.gen) == (1, 1)


def test_shard__a_release_voids_the_promise_to_that_primary_up_to_its_epoch() -> None:
    shard = ShardCore(0, me="b", replicas=("a", "b", "c"))
    shard.reset(Role.FOLLOWER, 3, "a", 0.0, lease_s=1.0)
    shard.acknowledged("a", 10.0)
    assert shard.admission("c", 4, 10.1, lease_s=1.0) is Admission.LEASE_WAIT
    assert not shard.released("c", 3, 10.1)  # not whom we promised
    assert not shard.released("a", 2, 10.1)  # an older step-down: our promise came after
    assert shard.admission("c", 4, 10.1, lease_s=1.0) is Admission.LEASE_WAIT
    assert shard.released("a", 3, 10.1)
    assert shard.admission("c", 4, 10.1, lease_s=1.0) is Admission.ADOPT


def test_shard__a_new_primary_released_by_the_old_one_serves_at_once() -> None:
    shard = ShardCore(0, me="b", replicas=("a", "b", "c"))
    shard.reset(Role.FOLLOWER, 1, "a", 0.0, lease_s=1.0)
    shard.acknowledged("a", 10.0)
    shard.reset(Role.PRIMARY, 2, "b", 10.1, lease_s=1.0)
    assert shard.serving_after == pytest.approx(11.0)
    shard.released("a", 1, 10.2)
    assert shard.serving_after == pytest.approx(10.2)


def _acked(shard: ShardCore, follower: str, seq: int) -> None:
    shard.progress[follower].sent(seq)
    shard.on_result(
        shard.progress[follower],
        _ok(seq),
        gen=0,
        prev_seq=seq - 1,
        sent_at=100.0,
        now=100.1,
        lease_s=1.0,
        hold_s=0.05,
    )


def test_handover__stops_sequencing_and_waits_for_the_successor_to_hold_the_whole_log() -> None:
    shard = _primary()
    entry = shard.propose(b"w1")
    shard.persisted(entry[SEQ], entry[EPOCH])
    assert shard.begin_handover("b", 2)
    assert not shard.sequencing()
    _acked(shard, "c", 1)  # committed by a and c; b has yet to hold it
    shard.applied_seq = shard.advance_commit()
    assert shard.applied_seq == 1
    assert not shard.handover_ready()
    _acked(shard, "b", 1)
    assert shard.handover_ready()
    shard.reset(Role.FOLLOWER, 2, "b", 100.2, lease_s=1.0)
    assert (shard.handover_to, shard.handover_epoch) == ("", 0)


def test_handover__not_applied_here_yet__not_ready() -> None:
    shard = _primary()
    entry = shard.propose(b"w1")
    shard.persisted(entry[SEQ], entry[EPOCH])
    shard.begin_handover("b", 2)
    _acked(shard, "b", 1)  # b holds it, but its writer has no answer yet (not applied)
    assert not shard.handover_ready()


@pytest.mark.parametrize(
    ("successor", "epoch"),
    [("a", 2), ("d", 2), ("b", 3), ("b", 1)],  # ourselves, no voter, not the next epoch
)
def test_handover__only_to_another_voter_for_the_next_epoch(successor: str, epoch: int) -> None:
    shard = _primary()
    assert not shard.begin_handover(successor, epoch)
    assert shard.sequencing()


def _follower_of_a(restarted_in: int = 0, me: str = "b") -> ShardCore:
    shard = ShardCore(0, me=me, replicas=("a", "b", "c"), restarted_in=restarted_in)
    shard.reset(Role.FOLLOWER, 1, "a", 0.0, lease_s=1.0)
    shard.append((1, 1, b"w1"))
    return shard


def test_take_over__only_with_the_log_the_primary_handed_over() -> None:
    voters = ("a", "b", "c")
    assert _follower_of_a().may_take_over("a", 1, 1, 1, 2, voters)
    assert not _follower_of_a().may_take_over("a", 1, 2, 1, 2, voters)  # it had an entry more
    assert not _follower_of_a().may_take_over("a", 1, 1, 0, 2, voters)  # another entry there
    assert not _follower_of_a().may_take_over("c", 1, 1, 1, 2, voters)  # not whom we follow
    assert not _follower_of_a().may_take_over("a", 1, 1, 1, 3, voters)  # not the next epoch
    assert not _follower_of_a(restarted_in=2).may_take_over("a", 1, 1, 1, 2, voters)
    assert not _follower_of_a().may_take_over("a", 1, 1, 1, 2, ("a", "c", "d"))  # no voter
    # a learner a moment ago: the voters the primary hands over with count
    assert _follower_of_a(me="d").may_take_over("a", 1, 1, 1, 2, ("a", "c", "d"))
