"""``python -m mt_counters``: run the counters service until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_counters.app import app
from mt_counters.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
