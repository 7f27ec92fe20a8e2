"""``python -m mt_kv``: run the kv service until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_kv.app import app
from mt_kv.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
