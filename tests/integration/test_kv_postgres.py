"""The KV on PostgreSQL (by URL) instead of SQLite: same operations, and a replica restarted on
its PostgreSQL database comes back with its data. A real server (Debian's PostgreSQL), in a
folder of its own, on a port of its own."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from mt_cli.kvcluster import KVCluster
from mt_cli.ports import free_port
from mt_kv_client import Consistency, Key, KVClient

BINDIR = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _as_postgres(*cmd: str) -> None:
    # initdb and the server refuse to run as root; Debian's package made the postgres user.
    subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True)


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    assert BINDIR, "PostgreSQL is not installed: run infra/install.sh"
    bindir = BINDIR[-1]
    # pytest's own temp folders are private to root; the postgres user needs its own.
    root = Path(tempfile.mkdtemp(prefix="mt-pg-"))
    shutil.chown(root, "postgres", "postgres")
    data, port = root / "data", free_port()
    _as_postgres(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust")
    _as_postgres(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(root / "pg.log"),
        "-w",
        "start",
        "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=on",
    )
    try:
        for db in ("kv1", "kv2", "kv3"):
            _as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), db)
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}"
    finally:
        _as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
async def cluster(
    postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[KVCluster]:
    urls = {f"kv-{i}": f"{postgres}/kv{i}" for i in (1, 2, 3)}
    kv = KVCluster(Path(tmp_path_factory.mktemp("kvpg")), store_urls=urls)
    try:
        await kv.start()
        yield kv
    finally:
        kv.stop()


async def test_kv_on_postgres__serves_every_operation(cluster: KVCluster) -> None:
    async with KVClient(cluster.manager_addr) as kv:
        await kv.multi_put((Key("test", b"pg", f"k{i:03d}".encode()), b"v") for i in range(120))
        assert await kv.increment(Key("test", b"pg", b"n"), 3) == 3
        items, cursor = await kv.scan("test", b"pg", b"k", limit=100)
        assert len(items) == 100
        assert cursor
        item = await kv.get(Key("test", b"pg", b"k007"), Consistency.STRONG)
        assert item is not None
        assert item.value == b"v"


async def test_kv_on_postgres__a_restarted_replica_reloads_its_data(cluster: KVCluster) -> None:
    async with KVClient(cluster.manager_addr) as kv:
        keys = [Key("test", f"r{i}".encode(), b"") for i in range(200)]
        await kv.multi_put((key, key.partition) for key in keys)
        for name in ("kv-1", "kv-2", "kv-3"):  # one at a time: a majority stays up
            cluster.kill(name)
            cluster.start_replica(name)
            await cluster.wait_rejoined(name)
        found = await kv.multi_get(keys)
        assert all(found[key] is not None for key in keys)
