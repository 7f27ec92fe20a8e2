"""The async client of the minithreads KV service (see :mod:`mt_kv_client.client`)."""

from mt_kv_contract.errors import ConditionFailed, Indeterminate
from mt_kv_contract.keys import Key

from mt_kv_client.client import Consistency, Durability, KVClient, Session
from mt_kv_client.protocol import KV

__all__ = [
    "KV",
    "ConditionFailed",
    "Consistency",
    "Durability",
    "Indeterminate",
    "KVClient",
    "Key",
    "Session",
]
