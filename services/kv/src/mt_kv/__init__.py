"""The KV service (after ZippyDB): a shard manager and replica processes.

Keyspaces -> μshards (a hash of a key's partition) -> shards -> replica sets of 3 with one
primary. The primary sequences writes, group-commits them to its store and replicates them in
batches, acknowledging once a majority holds them durably; the shard manager assigns primaries
under epochs and fails over when one is lost.
"""
