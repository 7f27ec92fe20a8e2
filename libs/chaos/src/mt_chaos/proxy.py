"""A userspace TCP proxy for one network link, to cut or slow it on demand.

``tc netem`` is not available in this kernel, so each replication link (replica A reaching
replica B) goes through one of these: A is told B's address is the proxy's. Modes:

- ``heal()``: bytes pass through;
- ``delay(ms)``: each chunk is held ``ms`` before it is forwarded (both directions);
- ``cut()``: open connections are closed and new ones are accepted and closed at once, as if
  the peer were unreachable — a partition of that link.
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 64 * 1024


class LinkProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.cut_off = False
        self.delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> LinkProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        self.cut_off = True
        self._drop_all()

    def delay(self, ms: float) -> None:
        self.delay_s = ms / 1000

    def heal(self) -> None:
        self.cut_off, self.delay_s = False, 0.0

    def _drop_all(self) -> None:
        for task in list(self._links):
            task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut_off:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._links.discard(task)
            return
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except (asyncio.CancelledError, OSError):
            pass
        finally:
            self._links.discard(task)
            for w in (writer, up_writer):
                with contextlib.suppress(Exception):
                    w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                writer.close()
                return
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self.cut_off:
                raise ConnectionResetError("link cut")
            writer.write(chunk)
            await writer.drain()
