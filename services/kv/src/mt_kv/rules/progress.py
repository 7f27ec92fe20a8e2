"""What a primary knows of one follower's copy of a shard's log, and how each event changes it.

Requests are sent ahead of the answers (``next_seq`` moves on as entries are sent); an answer
that says the follower's log does not line up rewinds ``next_seq`` and bumps ``gen``, so answers
to requests sent before the rewind are recognised as stale. While ``probing`` (after a rewind, a
new link, a promotion) one request at a time is out.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Progress:
    next_seq: int  # the next entry to send
    match_seq: int = 0  # durable on the follower and the same as ours up to here
    acked_at: float = 0.0  # when the latest request it acknowledged was sent (the lease)
    gen: int = 0
    probing: bool = True
    probe_out: bool = False
    hold_until: float = 0.0  # a probe that made no progress waits for the next tick
    last_hint: int = -1  # where the follower last said its log matches (after a refusal)

    def may_send(self, now: float) -> bool:
        """Whether a request may go now: a probe only when none is out and none is held."""
        return not (self.probing and (self.probe_out or now < self.hold_until))

    def sent(self, last_seq: int | None) -> None:
        """A request went, carrying entries up to ``last_seq`` (None: none)."""
        self.probe_out = self.probing
        if last_seq is not None:
            self.next_seq = last_seq + 1

    def rewind(self, next_seq: int) -> None:
        """Send from ``next_seq`` again, one request at a time until the follower agrees;
        answers to what was sent before are stale from now on."""
        self.gen += 1
        self.next_seq = next_seq
        self.probing, self.probe_out = True, False

    def acknowledged(self, durable_seq: int, sent_at: float, gen: int) -> None:
        """The follower holds our log durably up to ``durable_seq``, as of a request sent at
        ``sent_at`` (of stream ``gen``)."""
        self.match_seq = max(self.match_seq, durable_seq)
        self.acked_at = max(self.acked_at, sent_at)
        self.last_hint = -1
        if gen == self.gen:
            self.probing = self.probe_out = False

    def mismatched(self, durable_seq: int, gen: int, now: float, hold_s: float) -> None:
        """The follower's log does not line up with a request of stream ``gen``: send again
        from where it says its log matches ours. The same hint twice (e.g. it is copying a
        snapshot) waits ``hold_s``: asking again at once would just spin."""
        if gen != self.gen:
            return  # an answer to a request sent before the last rewind
        self.match_seq = min(self.match_seq, durable_seq)
        stuck = durable_seq == self.last_hint
        self.last_hint = durable_seq
        self.rewind(durable_seq + 1)
        if stuck:
            self.hold_until = now + hold_s

    def lease_refused(self, prev_seq: int, gen: int, now: float, hold_s: float) -> None:
        """The follower still honours another primary's lease: the same request again once
        that may have run out (after ``hold_s``)."""
        if gen != self.gen:
            return
        self.rewind(prev_seq + 1)
        self.hold_until = now + hold_s

    def link_lost(self, last_seq: int) -> None:
        """What was in flight may or may not have arrived: probe from what is known to match
        (or, knowing nothing, from our log's end)."""
        self.rewind(self.match_seq + 1 if self.match_seq else last_seq + 1)
