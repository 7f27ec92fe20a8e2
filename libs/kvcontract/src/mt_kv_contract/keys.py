"""Where a key lives: keyspace + partition -> μshard (a hash) -> shard (the routing table),
and how big keys, values and batches may be.

The client and the replicas both use :func:`microshard`, so the function is part of the
contract: changing it moves every key. One partition's rows hash together, which is what makes
a prefix scan within a partition a single-shard operation.
"""

from __future__ import annotations

import functools
import hashlib
from typing import NamedTuple

from mt_core.errors import InvalidArgument, TooLarge

MAX_KEY_BYTES = 1024  # keyspace + partition + key
MAX_VALUE_BYTES = 1024 * 1024
MAX_BATCH = 1000  # mutations or keys per request
# A key whose own part starts with this is a job row of the transactional outbox
# (mt_jobs.outbox): the shard's primary lists it in the shard's outbox index, in the same log
# entry, so a relay finds every row written and not yet deleted — whatever partition holds it.
OUTBOX_KEY_PREFIX = b"\x00outbox/"


class Key(NamedTuple):
    """A key (a tuple: hashed and compared at C speed, which a hot path of dict lookups per
    key notices)."""

    keyspace: str
    partition: bytes
    key: bytes = b""

    def validate(self) -> None:
        if not self.keyspace:
            raise InvalidArgument("a key needs a keyspace", code="invalid_key")
        size = len(self.keyspace) + len(self.partition) + len(self.key)
        if size > MAX_KEY_BYTES:
            raise TooLarge(
                f"key is {size} bytes; the limit is {MAX_KEY_BYTES}", code="key_too_large"
            )


@functools.lru_cache(maxsize=200_000)
def microshard(keyspace: str, partition: bytes, microshards: int) -> int:
    """(Remembered: a user's partition is hashed once, not on each of its keys' reads.)"""
    digest = hashlib.blake2b(keyspace.encode() + b"\x00" + partition, digest_size=8).digest()
    return int.from_bytes(digest, "big") % microshards


def validate_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise TooLarge(
            f"value is {len(value)} bytes; the limit is {MAX_VALUE_BYTES}", code="value_too_large"
        )
