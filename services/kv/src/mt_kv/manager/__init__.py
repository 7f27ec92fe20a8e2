"""The shard manager: heartbeats, epochs, primary assignment and failover."""
