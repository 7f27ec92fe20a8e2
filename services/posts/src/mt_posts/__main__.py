"""``python -m mt_posts``: run the posts service until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_posts.app import app
from mt_posts.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
