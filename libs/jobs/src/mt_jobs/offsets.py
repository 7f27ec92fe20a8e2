"""Which offset of a partition may be committed, when its records finish out of order.

Batches of one partition run concurrently and finish in any order; committing offset N tells
Kafka that everything before N is done, so the committable offset is just past the longest
finished prefix of what was handed out. A record still running (or waiting in the buffer)
holds the commit back: after a crash it and everything after it are delivered again
(at-least-once), never skipped.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Offsets of one assigned partition, handed out in increasing order."""

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self._committable: int | None = None
        self._committed: int | None = None
        # Set when the partition is revoked: its buffered records are dropped and the results
        # of its running batches are no longer ours to commit.
        self.revoked = False

    def __len__(self) -> int:
        """Offsets handed out and not finished."""
        return len(self._pending)

    def add(self, offset: int) -> None:
        if self._pending and offset <= self._pending[-1]:
            raise ValueError(f"offset {offset} handed out after {self._pending[-1]}")
        self._pending.append(offset)

    def done(self, offset: int) -> None:
        self._done.add(offset)
        while self._pending and self._pending[0] in self._done:
            finished = self._pending.popleft()
            self._done.discard(finished)
            self._committable = finished + 1

    def to_commit(self) -> int | None:
        """The next offset to commit, if it moved since the last :meth:`committed`."""
        if self._committable is None or self._committable == self._committed:
            return None
        return self._committable

    def committed(self, offset: int) -> None:
        self._committed = offset
