"""A TCP proxy on loopback that a test can cut: every open connection is dropped and new
ones are refused until it is restored. It stands between workers and PostgreSQL so that a
test can break the network without stopping the shared server."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        #: How many connections were refused while cut: a test can tell that it met the cut.
        self.refused = 0
        self._loop = asyncio.new_event_loop()
        self._open: set[asyncio.StreamWriter] = set()
        #: Connections that carry nothing more, without a word (``silence``).
        self._silenced: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def cut(self) -> None:
        """Drop every connection now, and refuse new ones."""
        self._loop.call_soon_threadsafe(self._cut_now)

    def silence(self) -> None:
        """Stop carrying the open connections' data, without closing them: the network
        dropped them without a word. New connections work."""
        self._loop.call_soon_threadsafe(lambda: self._silenced.update(self._open))

    def restore(self) -> None:
        self._loop.call_soon_threadsafe(setattr, self, "_cut", False)

    def _cut_now(self) -> None:
        self._cut = True
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()
        self._cut_now()
        pending = asyncio.all_tasks(self._loop)
        for task in pending:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open |= {writer, up_writer}
        await asyncio.gather(
            _pipe(reader, up_writer, self._silenced), _pipe(up_reader, writer, self._silenced)
        )
        self._open -= {writer, up_writer}


async def _pipe(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    silenced: set[asyncio.StreamWriter] = frozenset(),  # type: ignore[assignment]
) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            if writer in silenced:
                continue
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError):
        writer.close()


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[Proxy]:
    with Proxy(host, port) as proxy:
        yield proxy
