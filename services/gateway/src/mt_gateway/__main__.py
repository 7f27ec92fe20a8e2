"""``python -m mt_gateway``: run the REST gateway until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_gateway.app import app
from mt_gateway.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
