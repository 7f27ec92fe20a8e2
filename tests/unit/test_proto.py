"""The generated contracts package must match the .proto sources (etcd's genproto/verify)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_generated_package__is_fresh() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "proto" / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_package__covers_every_contract() -> None:
    import mt_proto

    package = Path(mt_proto.__file__).parent
    for proto in sorted((REPO / "proto" / "mt_proto").glob("*.proto")):
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi"):
            assert (package / f"{proto.stem}{suffix}").is_file(), f"{proto.stem}{suffix} missing"


def test_contracts__name_every_service() -> None:
    from mt_proto import feed_pb2, graph_pb2, kv_pb2, posts_pb2, users_pb2

    services = {
        name
        for module in (users_pb2, graph_pb2, posts_pb2, feed_pb2, kv_pb2)
        for name in module.DESCRIPTOR.services_by_name
    }
    assert {"KV", "Replication", "ShardManager"} <= services
    assert len(services) >= 7
