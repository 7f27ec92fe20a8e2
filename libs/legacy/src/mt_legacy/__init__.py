"""The synthetic legacy ("Instagram") graph (see :mod:`mt_legacy.graph`)."""

from mt_legacy.graph import LegacyGraph

__all__ = ["LegacyGraph"]
