"""Ports for the processes tests and the stack start (mt_cli.ports)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mt_cli import ports


@pytest.fixture(autouse=True)
def _linux_default_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: 32_768)


def test_free_port__is_below_the_ephemeral_range() -> None:
    for _ in range(20):
        assert 10_000 <= ports.free_port() < ports._ephemeral_start()


def test_reserve__adds_the_ephemeral_ones_to_what_is_reserved(tmp_path: Path) -> None:
    reserved = tmp_path / "reserved"
    reserved.write_text("40000-40010\n")
    assert ports.reserve([8080, 51056, 50051], reserved)
    assert reserved.read_text() == "40000-40010,50051,51056"


def test_reserve__is_best_effort_where_it_cannot_write(tmp_path: Path) -> None:
    assert not ports.reserve([51056], tmp_path / "missing" / "reserved")
    assert ports.reserve([8080], tmp_path / "missing" / "reserved")  # nothing to reserve
