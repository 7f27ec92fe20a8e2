"""``python -m mt_users``: run the users service until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_users.app import app
from mt_users.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
