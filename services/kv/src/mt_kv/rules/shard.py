"""One shard's replication state and its rules: role and epoch (changed only through
:meth:`ShardCore.reset`), the log tail, the commit point and, as primary, each follower's
progress and the lease; as follower, the lease it promised. Times are arguments: no clock here.

The replica (``mt_kv.replica``) holds one per shard (its ``Shard`` adds the data and the
writers waiting) and does the I/O these decisions call for.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from mt_proto import kv_pb2 as pb

from mt_kv.rules import quorum
from mt_kv.rules.breaks import broken
from mt_kv.rules.follow import Admission, Fit, admit, fit
from mt_kv.rules.log import EPOCH, SEQ, LogRec
from mt_kv.rules.progress import Progress

S = pb.ShardAppendResult


class Role(enum.Enum):
    NONE = "none"  # just started, or fenced without a primary
    PRIMARY = "primary"
    FOLLOWER = "follower"


class Reset(NamedTuple):
    """What a :meth:`ShardCore.reset` asks of the replica."""

    stepped_down: bool  # writers waiting on our entries: their outcome is now unknown
    moved: bool  # the epoch or primary changed: persist it


@dataclass(eq=False)
class ShardCore:
    id: int
    me: str = ""  # this replica's id
    epoch: int = 0
    primary: str = ""
    replicas: tuple[str, ...] = ()  # the voters (ourselves among them unless a learner)
    learners: tuple[str, ...] = ()  # catching up to vote: sent the log, counted for nothing
    role: Role = Role.NONE
    applied_seq: int = 0
    applied_epoch: int = 0
    # The log tail kept in memory (also in the store): entries tail_start .. last.
    tail: list[LogRec] = field(default_factory=list)
    tail_start: int = 1
    base_epoch: int | None = 0  # epoch of the entry just before the tail (None: unknown)
    commit_seq: int = 0
    # Our store holds our log (as it is in memory) up to here: what we may count as ours for a
    # commit, and report to the shard manager, which elects by the logs it is told of.
    durable_seq: int = 0
    # Entries in the log not yet given to the store: a primary's sequenced entries wait for its
    # next persist; after a step down, the follower's next transaction takes those still in the
    # log (a new primary may hold them too: they must not be acknowledged unstored).
    unpersisted: list[LogRec] = field(default_factory=list)
    # ---- as primary
    progress: dict[str, Progress] = field(default_factory=dict)  # follower -> its progress
    lease_until: float = 0.0
    serving_after: float = 0.0
    epoch_start_seq: int = 0  # our first entry as primary of this epoch
    led_from: int = 0  # the epoch we began leading in (in-place steps continue it)
    # A planned handover (see begin_handover): to whom, as primary of which epoch.
    handover_to: str = ""
    handover_epoch: int = 0
    # ---- as follower
    last_ack_at: float = 0.0  # when we last acknowledged a primary (our lease promise)
    last_ack_primary: str = ""
    last_ack_epoch: int = 0  # the epoch we last acknowledged it in
    fresh_at: float = 0.0  # when we were last caught up with the primary's commit point
    snapshotting: bool = False
    restarted_in: int = 0  # the epoch this replica loaded from its store on start

    # ------------------------------------------------------------------ the log

    @property
    def last_seq(self) -> int:
        return self.tail[-1][SEQ] if self.tail else self.tail_start - 1

    @property
    def last_epoch(self) -> int:
        if self.tail:
            return self.tail[-1][EPOCH]
        return self.base_epoch or 0

    def entry(self, seq: int) -> LogRec | None:
        index = seq - self.tail_start
        return self.tail[index] if 0 <= index < len(self.tail) else None

    def epoch_at(self, seq: int) -> int | None:
        """The epoch of the entry at ``seq`` if known (0 for the empty prefix)."""
        if seq == 0 and self.tail_start == 1:
            return 0
        found = self.entry(seq)
        if found is not None:
            return found[EPOCH]
        if seq == self.tail_start - 1:
            return self.base_epoch
        if seq == self.applied_seq:
            return self.applied_epoch
        return None

    def append(self, entry: LogRec) -> None:
        assert entry[SEQ] == self.last_seq + 1, (entry[SEQ], self.last_seq)
        self.tail.append(entry)

    def restart_log(self, seq: int, epoch: int) -> None:
        """An empty log positioned after ``seq`` (a snapshot install: durable once stored)."""
        self.tail, self.tail_start, self.base_epoch = [], seq + 1, epoch
        self.durable_seq = min(self.durable_seq, seq)

    def truncate_after(self, seq: int) -> None:
        """Drop log entries after ``seq`` (never committed ones)."""
        assert seq >= self.applied_seq, (seq, self.applied_seq)
        del self.tail[max(0, seq - self.tail_start + 1) :]
        self.durable_seq = min(self.durable_seq, seq)
        self.unpersisted = [e for e in self.unpersisted if e[SEQ] <= seq]

    def trim(self, keep_entries: int) -> int:
        """Forget the oldest applied entries beyond ``keep_entries`` — never one not yet given
        to the store (the store's log is trimmed to this floor too); returns the new floor."""
        upto = self.applied_seq
        if self.unpersisted:
            upto = min(upto, self.unpersisted[0][SEQ] - 1)
        excess = min(len(self.tail) - keep_entries, upto - self.tail_start + 1)
        if excess > 0:
            self.base_epoch = self.tail[excess - 1][EPOCH]
            del self.tail[:excess]
            self.tail_start += excess
        return self.tail_start - 1

    # ------------------------------------------------------------------ roles

    def reset(
        self,
        role: Role,
        epoch: int,
        primary: str,
        now: float,
        lease_s: float,
        *,
        continues: bool = False,
    ) -> Reset:
        """EVERY change of role, epoch or primary. Leaving the primary's role drops what only
        a primary keeps; taking it starts at the log's end, each follower probed from there,
        serving strong reads only once the lease a follower promised the previous primary
        has run out (the first entry of the epoch, the replica's to sequence, comes next).

        ``continues``: the shard manager moved our shard to the next epoch with us still its
        primary (a membership step in place, see :mod:`membership`): nothing is dropped, the
        log goes on, the lease counts only the voters as they are now."""
        if continues:
            assert (self.role, role, primary) == (Role.PRIMARY, Role.PRIMARY, self.me), (
                self.role,
                role,
                primary,
            )
            assert epoch > self.epoch, (epoch, self.epoch)
            self.epoch = epoch
            self.handover_to, self.handover_epoch = "", 0
            self.lease_until = self._voters_lease(lease_s)
            return Reset(stepped_down=False, moved=True)
        self.handover_to, self.handover_epoch = "", 0
        stepped_down = self.role is Role.PRIMARY and (role, epoch) != (Role.PRIMARY, self.epoch)
        if stepped_down:  # (entries sequenced and not yet stored stay: see unpersisted)
            self.lease_until = 0.0
            self.progress = {}
        moved = (epoch, primary) != (self.epoch, self.primary)
        self.epoch, self.primary, self.role = epoch, primary, role
        if role is Role.PRIMARY:
            assert self.me in self.replicas, (self.me, self.replicas)  # a learner never leads
            promised = self.last_ack_primary not in ("", self.me)
            self.serving_after = max(now, self.last_ack_at + lease_s if promised else 0.0)
            self.lease_until = 0.0
            first = self.last_seq + 1
            self.progress = {r: Progress(next_seq=first) for r in self._others()}
            self.commit_seq = self.applied_seq
            self.led_from = epoch
        return Reset(stepped_down, moved)

    def set_members(self, voters: Sequence[str], learners: Sequence[str]) -> None:
        """The voters and learners the shard manager assigned. Voters change only with the
        epoch (the caller resets to it right after); as primary, a new member is probed from
        our log's end and a member gone is no longer sent to."""
        self.replicas = tuple(voters)
        self.learners = tuple(r for r in learners if r not in self.replicas)
        if self.role is Role.PRIMARY:
            first = self.last_seq + 1
            self.progress = {
                r: self.progress.get(r) or Progress(next_seq=first) for r in self._others()
            }

    def _others(self) -> list[str]:
        """Whom we send our log to as primary: the other voters and the learners."""
        return [r for r in (*self.replicas, *self.learners) if r != self.me]

    def _voters_lease(self, lease_s: float) -> float:
        """The lease the voters' acknowledgements give, from scratch: a promise of a replica
        no longer a voter binds nobody the next primary needs."""
        acks = (self.progress[r].acked_at for r in self.replicas if r in self.progress)
        return quorum.lease_until(0.0, acks, len(self.replicas), lease_s)

    def may_lead(self, epoch: int) -> bool:
        """Never lead an epoch we knew before a restart: we may have led it then, and our log
        may since have lost entries we sequenced in it — leading it again would give another
        entry the same (seq, epoch). The shard manager sees a primary that does not take the
        role and starts a new epoch."""
        return epoch > self.restarted_in

    # ------------------------------------------------------------------ handover

    def begin_handover(self, successor: str, epoch: int) -> bool:
        """The shard manager asks us to hand the shard to ``successor`` (a voter), primary of
        ``epoch`` (the next): from now on we sequence nothing (Raft's leadership transfer).
        True if this starts it."""
        if (
            self.role is not Role.PRIMARY
            or self.handover_to
            or epoch != self.epoch + 1
            or successor == self.me
            or successor not in self.replicas
        ):
            return False
        self.handover_to, self.handover_epoch = successor, epoch
        return True

    def handover_ready(self) -> bool:
        """We may step down and tell the successor to take over: it holds our whole log, and
        all of it is committed and applied here (no writer is left waiting on us). Its log then
        holds every entry ever committed, as a new primary's must."""
        if not self.handover_to or self.applied_seq != self.last_seq:
            return False
        if broken("hand_over_early"):
            return True
        progress = self.progress.get(self.handover_to)
        return progress is not None and progress.match_seq >= self.last_seq

    def may_take_over(
        self,
        sender: str,
        epoch: int,
        last_seq: int,
        last_epoch: int,
        successor_epoch: int,
        voters: Sequence[str],
    ) -> bool:
        """Whether to lead ``successor_epoch`` on ``sender``'s handover: it led ``epoch`` and
        we follow it there, our log ends where its did (the same entry), we vote (among
        ``voters``, as it was told), and we never knew that epoch before a restart."""
        whole_log = self.last_seq == last_seq and self.epoch_at(last_seq) == last_epoch
        return (
            self.role is Role.FOLLOWER
            and (self.epoch, self.primary) == (epoch, sender)
            and successor_epoch == epoch + 1
            and (whole_log or broken("hand_over_early"))
            and self.me in voters
            and self.may_lead(successor_epoch)
        )

    # ------------------------------------------------------------------ as primary

    def sequencing(self) -> bool:
        """We add to the log: the primary, not handing the shard over."""
        return self.role is Role.PRIMARY and not self.handover_to

    def propose(self, payload: bytes) -> LogRec:
        """Our next entry (the replica sequences only as primary)."""
        entry = (self.last_seq + 1, self.epoch, payload)
        self.append(entry)
        self.unpersisted.append(entry)
        return entry

    def persisted(self, seq: int, epoch: int) -> None:
        """Our store synced our log up to ``seq`` (of ``epoch``), as it was when written: if
        that entry is still ours (not truncated since), our log is durable up to it."""
        if self.epoch_at(seq) == epoch:
            self.durable_seq = max(self.durable_seq, seq)

    def reported(self) -> tuple[int, int]:
        """(last epoch, last seq) of our log as far as it is durable: what the shard manager
        may elect by (a crash cannot take it away)."""
        seq = min(self.last_seq, self.durable_seq)
        return self.epoch_at(seq) or 0, seq

    def advance_commit(self) -> int:
        """The commit point after what the voters hold (see :func:`quorum.commit_point`)."""
        counted = (*self.replicas, *self.learners) if broken("learner_counts") else self.replicas
        followers = (
            self.progress[r].match_seq if r in self.progress else 0 for r in counted if r != self.me
        )
        self.commit_seq = quorum.commit_point(
            self.commit_seq,
            [self.durable_seq, *followers],
            len(self.replicas),
            self.epoch,
            self.epoch_at,
        )
        return self.commit_seq

    def may_serve_strong(self, now: float) -> bool:
        """A primary serves strong reads only within its lease (and once the lease promised
        to the primary before it has run out)."""
        if broken("read_from_fenced"):
            return self.role is Role.PRIMARY
        return self.role is Role.PRIMARY and self.serving_after <= now < self.lease_until

    def append_for(
        self, progress: Progress, max_entries: int
    ) -> tuple[pb.ShardAppend, list[LogRec]]:
        """A follower's part of an Append for this shard, and the entries it carries."""
        nxt = min(progress.next_seq, self.last_seq + 1)
        prev = nxt - 1
        prev_epoch = self.epoch_at(prev) if prev >= self.tail_start - 1 else None
        msg = pb.ShardAppend(shard=self.id, epoch=self.epoch, commit_seq=self.commit_seq)
        if prev_epoch is None:
            # What the follower needs is no longer in our log: it must copy a snapshot.
            # prev_seq tells it our log's floor, so a follower already past it just says where
            # it is instead of copying again.
            msg.snapshot_required = True
            msg.prev_seq = self.tail_start - 1
            return msg, []
        msg.prev_seq, msg.prev_epoch = prev, prev_epoch
        upto = min(self.last_seq, prev + max_entries)
        start = prev + 1 - self.tail_start
        return msg, self.tail[start : start + max(0, upto - prev)]

    def on_result(
        self,
        progress: Progress,
        result: pb.ShardAppendResult,
        *,
        gen: int,
        prev_seq: int,
        sent_at: float,
        now: float,
        lease_s: float,
        hold_s: float,
    ) -> bool:
        """A follower's answer to our Append (of stream ``gen``, sent at ``sent_at``); True if
        it shows a later epoch than ours (then we must step down)."""
        if result.status == S.OK:
            progress.acknowledged(result.durable_seq, sent_at, gen)
            self.lease_until = quorum.lease_until(
                self.lease_until,
                (self.progress[r].acked_at for r in self.replicas if r in self.progress),
                len(self.replicas),
                lease_s,
            )
        elif result.status == S.STALE_EPOCH:
            if result.epoch > self.epoch:
                return True
            # An Append of an epoch we continued in place, to a follower already past it:
            # the same entries again, in this epoch.
            progress.lease_refused(prev_seq, gen, now, 0.0)
        elif result.status == S.MISMATCH:
            progress.mismatched(result.durable_seq, gen, now, hold_s)
        else:  # LEASE_WAIT
            progress.lease_refused(prev_seq, gen, now, hold_s)
        return False

    # ------------------------------------------------------------------ as follower

    def admission(self, sender: str, sender_epoch: int, now: float, lease_s: float) -> Admission:
        """Whether to take an Append of ``sender`` (see :func:`follow.admit`)."""
        if self.role is Role.PRIMARY and (sender_epoch, sender) == (self.epoch, self.primary):
            return Admission.STALE_EPOCH  # (an Append of our own: never sent)
        return admit(
            epoch=self.epoch,
            primary=self.primary,
            sender_epoch=sender_epoch,
            sender=sender,
            promised_to=self.last_ack_primary,
            promised_at=self.last_ack_at,
            lease_s=lease_s,
            now=now,
        )

    def fit(self, msg: pb.ShardAppend, entries: tuple[LogRec, ...]) -> Fit:
        """How ``entries`` fit our log, and our log changed to hold them if they do."""
        fitted = fit(
            last_seq=self.last_seq,
            applied_seq=self.applied_seq,
            epoch_at=self.epoch_at,
            prev_seq=msg.prev_seq,
            prev_epoch=msg.prev_epoch,
            entries=entries,
        )
        if fitted.ok:
            if fitted.truncate_after is not None:
                self.truncate_after(fitted.truncate_after)
            for entry in fitted.append:
                self.append(entry)
        return fitted

    def acknowledged(self, primary: str, now: float) -> None:
        """We acknowledged ``primary``'s Append (durably): our lease promise runs from now."""
        self.last_ack_at, self.last_ack_primary = now, primary
        self.last_ack_epoch = self.epoch

    def released(self, primary: str, epoch: int, now: float) -> bool:
        """``primary`` stepped down from our shard in ``epoch`` and serves no strong read of
        it any more: a promise we made it in that epoch or before is void (not one made in a
        later epoch it leads again). True if it was ours to void."""
        if primary != self.last_ack_primary or self.last_ack_epoch > epoch:
            return False
        self.last_ack_at = -math.inf  # (binds nobody)
        if self.role is Role.PRIMARY:
            self.serving_after = min(self.serving_after, now)
        return True
