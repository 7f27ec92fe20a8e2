"""The KV's replication rules, apart from I/O: no asyncio, no clock (times come in as
arguments), no store. The replica (``mt_kv.replica``) drives them and does the I/O."""
