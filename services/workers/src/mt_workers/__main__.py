"""``python -m mt_workers``: run the async workers until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_workers.app import app
from mt_workers.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
