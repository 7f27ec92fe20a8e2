"""A shard's log entry: (seq, epoch, payload), the payload the effects of one write,
MessagePack-packed (``mt_kv.data.encode_changes``). A plain tuple, like a stored value: the
garbage collector stops tracking it, and a replica keeps thousands per shard."""

from __future__ import annotations

from typing import Final

LogRec = tuple[int, int, bytes]
SEQ: Final = 0
EPOCH: Final = 1
PAYLOAD: Final = 2
