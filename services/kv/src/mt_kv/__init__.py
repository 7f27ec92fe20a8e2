"""The kv service.

The quorum-replicated, sharded key-value store (after ZippyDB).
"""
