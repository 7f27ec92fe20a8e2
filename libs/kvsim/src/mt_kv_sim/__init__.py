"""Deterministic simulation of a KV cluster: the real replica driver and rules, and the real
shard manager, on a simulated network, disk and clock — every fault drawn from one seed, so any
failure replays exactly (after FoundationDB's simulation). See :mod:`mt_kv_sim.run`."""
