"""``python -m mt_kv.manager``: run the KV shard manager until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_kv.manager.app import app
from mt_kv.settings import ManagerSettings


def main() -> None:
    service.main(ManagerSettings, app)


if __name__ == "__main__":
    main()
