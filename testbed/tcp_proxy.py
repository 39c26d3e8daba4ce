"""A TCP proxy on loopback that can black-hole its traffic (a silent cut of one node's etcd link).

A node's etcd connection goes through it; :meth:`TcpProxy.cut` drops the packets while
the connection stays open, as a silent network fault does; UDP is untouched.

It runs its own event loop in a daemon thread, listens on a free port of 127.0.0.1 and
forwards to ``target``; :meth:`TcpProxy.cut` makes it read and discard everything in both
directions until :meth:`TcpProxy.restore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from testbed.ports import free_tcp_port


class TcpProxy:
    def __init__(self, target: tuple[str, int], port: int | None = None) -> None:
        self.target = target
        self.port = port if port is not None else free_tcp_port()
        self._cut = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)

    def cut(self) -> None:
        """Drop every byte from now on; connections stay open (nothing is reset or closed)."""
        self._cut.set()

    def restore(self) -> None:
        self._cut.clear()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self._cut.is_set():
                    continue  # black-holed: read and dropped, the sender sees no error
                writer.write(data)
                await writer.drain()

    def __enter__(self) -> TcpProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
