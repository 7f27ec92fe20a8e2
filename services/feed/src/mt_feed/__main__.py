"""``python -m mt_feed``: run the feed service until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_feed.app import app
from mt_feed.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
