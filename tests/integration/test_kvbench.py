"""`minithreads kv bench --vs etcd`, shortened: a fresh KV cluster and a fresh 3-member etcd
cluster of its own (not the stack's), driven alike; the JSON shape and its arithmetic."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mt_cli.kvbench import run_bench

SIDE = {"put_ops_s", "get_ops_s", "put_p99_ms", "get_p99_ms"}


@pytest.mark.timeout(60)
async def test_bench_vs_etcd__reports_both_sides_alike_and_cleans_up(tmp_path: Path) -> None:
    lines: list[str] = []
    started = time.monotonic()

    result = await run_bench(
        vs_etcd=True,
        duration_s=1,
        concurrency=8,
        value_bytes=100,
        home=tmp_path,
        progress=lines.append,
    )

    assert time.monotonic() - started < 60
    assert set(result) == {"kv", "etcd", "ratio", "machine", "settings"}
    for side in ("kv", "etcd"):
        assert set(result[side]) == SIDE, result  # no "errors": every op succeeded
        for name in ("put_ops_s", "get_ops_s"):
            assert isinstance(result[side][name], int)
            assert result[side][name] > 0, result
        for name in ("put_p99_ms", "get_p99_ms"):
            assert result[side][name] > 0, result
            assert result[side][name] == round(result[side][name], 1)
    for kind in ("put", "get"):
        expected = result["kv"][f"{kind}_ops_s"] / result["etcd"][f"{kind}_ops_s"]
        assert result["ratio"][kind] == pytest.approx(expected, abs=0.01)
    assert result["machine"]["cores"] >= 1
    assert result["machine"]["loadavg_1m"] >= 0
    assert result["settings"] == {"duration_s": 1, "concurrency": 8, "value_bytes": 100}
    assert any("Ctrl-C" in line for line in lines)
    assert any(line.startswith("bench: etcd get:") and "ops/s" in line for line in lines)
    assert not (tmp_path / "bench").exists()  # clusters stopped, their data removed
