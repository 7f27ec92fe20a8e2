"""A client's exactly-once session: every write that waits for its commit carries the
session's id and its own number, so the primary can answer a repeat of it (after an unknown
outcome) with the first outcome instead of applying it twice (see mt_kv.rules.sessions)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

from mt_proto import kv_pb2 as pb


def _wall_ms() -> int:
    return int(time.time() * 1000)


class WriteSession:
    def __init__(self, wall_ms: Callable[[], int] = _wall_ms, session_id: int = 0) -> None:
        self.id = session_id or secrets.randbits(64) or 1  # 0 means "no session"
        self._wall_ms = wall_ms
        self._seq = 0
        self.repeated = 0  # writes sent again after an unknown outcome

    def tag(self, request: pb.WriteRequest) -> None:
        """Give ``request`` the session and the next number, stamped with the time of its
        first attempt. Fast-ack writes get none: they promise less (acknowledged before they
        are durable), and have no record to repeat against."""
        if request.durability == pb.FAST_ACK:
            return
        self._seq += 1
        request.session = self.id
        request.session_seq = self._seq
        request.first_sent_ms = self._wall_ms()
