"""``python -m mt_graph``: run the graph service until SIGTERM."""

from __future__ import annotations

from mt_core import service

from mt_graph.app import app
from mt_graph.settings import Settings


def main() -> None:
    service.main(Settings, app)


if __name__ == "__main__":
    main()
