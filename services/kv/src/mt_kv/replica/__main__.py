"""``python -m mt_kv.replica``: run one KV replica until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_kv.replica.app import app
from mt_kv.settings import ReplicaSettings


def main() -> None:
    service.main(ReplicaSettings, app)


if __name__ == "__main__":
    main()
