"""A KV replica: primary for some shards, follower for the others."""
