"""The tables of a replica's store.

``kv_segments`` is the applied state of every shard the replica holds as of its last checkpoint,
as packed blobs (a base with every item, then deltas with the items changed since), ``kv_log``
the replication log (entries past the checkpoint's applied position are applied again once
known to be committed, or truncated), and ``kv_shards`` each shard's epoch and the applied
position its segments reflect. ``kv_items`` (a row per key) is where stores written before
segments kept their items; they are moved into segments when such a store is opened.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Integer, LargeBinary, MetaData, String, Table

metadata = MetaData()

items = Table(
    "kv_items",
    metadata,
    Column("keyspace", String(255), primary_key=True),
    Column("partition", LargeBinary, primary_key=True),
    Column("key", LargeBinary, primary_key=True),
    Column("shard", Integer, nullable=False, index=True),
    Column("value", LargeBinary, nullable=False),
    Column("version", BigInteger, nullable=False),
    Column("expires_at_ms", BigInteger, nullable=False, default=0),
)

log = Table(
    "kv_log",
    metadata,
    Column("shard", Integer, primary_key=True),
    Column("seq", BigInteger, primary_key=True),
    Column("epoch", BigInteger, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)

segments = Table(
    "kv_segments",
    metadata,
    Column("shard", Integer, primary_key=True),
    Column("seq", BigInteger, primary_key=True),  # the applied position it brings the shard to
    Column("part", Integer, primary_key=True),  # a segment too big for one blob is in parts
    Column("base", Boolean, nullable=False),  # every item of the shard, or only those changed
    # A MessagePack array of [keyspace, partition, key, value, version, expires_at_ms] arrays,
    # value nil for a key deleted since the segment before.
    Column("data", LargeBinary, nullable=False),
)

shards = Table(
    "kv_shards",
    metadata,
    Column("shard", Integer, primary_key=True),
    Column("epoch", BigInteger, nullable=False, default=0),
    Column("primary", String(64), nullable=False, default=""),
    Column("applied_seq", BigInteger, nullable=False, default=0),
    Column("applied_epoch", BigInteger, nullable=False, default=0),
)
