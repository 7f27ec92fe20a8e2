"""The async client of the minithreads KV service (see :mod:`mt_kv_client.client`)."""

from mt_kv_client.client import Consistency, Durability, KVClient, Session
from mt_kv_client.routing import Key

__all__ = ["Consistency", "Durability", "KVClient", "Key", "Session"]
