"""The KV store's statements in every driver parameter style it may meet."""

from __future__ import annotations

import pytest
from mt_kv.storage.store import _statements


def test_statements__each_style_numbers_or_marks_every_parameter() -> None:
    template = _statements("qmark").meta_upsert
    assert template.count("?") == 5
    assert "$5" in _statements("numeric_dollar").meta_upsert
    assert "$6" not in _statements("numeric_dollar").meta_upsert
    assert ":3" in _statements("numeric").log_upsert
    assert _statements("format").log_trim == "DELETE FROM kv_log WHERE shard = %s AND seq <= %s"


def test_statements__an_unknown_style_is_refused() -> None:
    with pytest.raises(ValueError, match="named"):
        _statements("named")
