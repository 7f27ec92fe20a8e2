"""Time-sortable ids and opaque cursors."""

from __future__ import annotations

import pytest
from mt_core.errors import InvalidArgument
from mt_core.ids import is_id, new_id, time_of
from mt_core.paging import decode_cursor, encode_cursor, limit_of


def test_new_id__sorts_by_creation_time_as_strings() -> None:
    ids = [new_id(at_us=t) for t in (5, 1_000, 2**40, 2**52)]
    assert ids == sorted(ids)
    assert all(is_id(i) for i in ids)
    assert time_of(ids[2]) == 2**40
    assert time_of("not an id") == 0


def test_cursor__round_trips_and_rejects_garbage() -> None:
    assert decode_cursor(encode_cursor(b"\x00abc\xff")) == b"\x00abc\xff"
    assert decode_cursor("") is None
    with pytest.raises(InvalidArgument):
        decode_cursor("a")


def test_limit__defaults_and_clamps() -> None:
    assert limit_of(0) == 20
    assert limit_of(5000) == 1000
    with pytest.raises(InvalidArgument):
        limit_of(-1)
