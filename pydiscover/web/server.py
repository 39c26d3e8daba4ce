"""The monitor's HTTP server (aiohttp): the page, ``/api/nodes``, ``/api/events`` and ``/metrics``.

aiohttp because it runs on the event loop the monitor's node already runs on: the
handlers read the node's state directly, with no thread and no lock between them.
The page's HTML, JavaScript and CSS ship in this package (no CDN, no build step), so
it works on an isolated LAN.

``/api/events`` is a server-sent event stream: a ``snapshot`` event (what the page
draws) at once, then whenever something changed (at most every ``PUSH_INTERVAL``) and
at least every second, each preceded by a ``change`` event for every join, leave,
promotion and demotion since the last one (at most ``CHANGES_PER_PUSH``).  A client
too slow to keep ``CLIENT_BACKLOG`` events is disconnected (its EventSource
reconnects) rather than buffered without bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import web

from .metrics import CONTENT_TYPE_LATEST, metrics_text
from .view import ClusterView

log = logging.getLogger("pydiscover.web")

#: The soonest a change is pushed after the previous snapshot, in seconds.
PUSH_INTERVAL = 0.2
#: A snapshot at least this often, in seconds (last seen, hello rates move with time).
REFRESH_INTERVAL = 1.0
#: Events a client may have waiting before it is dropped.
CLIENT_BACKLOG = 256
#: At most this many ``change`` events go out with one push; older ones waiting are skipped
#: (a flood of joins must not drop every client): the snapshot sent with them shows the state.
CHANGES_PER_PUSH = 100
_STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


def _static(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


class WebMonitor:
    """The HTTP side of one monitor: serves ``view`` until :meth:`close`."""

    def __init__(self, view: ClusterView, *, token: str | None = None) -> None:
        self.view = view
        self.token = token
        self._clients: set[asyncio.Queue[tuple[str, Any] | None]] = set()
        self._dirty = asyncio.Event()
        self._changes: collections.deque[dict[str, Any]] = collections.deque(maxlen=CHANGES_PER_PUSH)
        self._pusher: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._pages = {name: _static(name) for name in ("index.html", *_STATIC)}
        view.listeners.append(self._changed)
        self.app = web.Application(middlewares=[self._guard])
        self.app.router.add_get("/", self._index)
        self.app.router.add_get("/static/{name}", self._asset)
        self.app.router.add_get("/api/nodes", self._nodes)
        self.app.router.add_get("/api/events", self._events)
        self.app.router.add_get("/metrics", self._metrics)

    # ---------------------------------------------------------- lifecycle
    async def start(self, host: str, port: int) -> None:
        """Bind and serve; raises ``OSError`` if the address cannot be bound (a port in use)."""
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # SO_REUSEADDR: a restart must not fail on the keep-alive connections the last run
        # closed (TIME_WAIT); a port another process listens on is refused all the same.
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._pusher = asyncio.get_running_loop().create_task(self._push(), name="pydiscover-web-push")

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where it listens (``(host, port)`` per socket), once started."""
        if self._runner is None:
            return []
        return [(str(addr[0]), int(addr[1])) for addr in self._runner.addresses]

    async def close(self) -> None:
        """End every stream, stop serving; idempotent."""
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
            self._pusher = None
        for queue in list(self._clients):
            self._offer(queue, None)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(ValueError):
            self.view.listeners.remove(self._changed)

    # ----------------------------------------------------------- handlers
    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """With a token, the data needs it (``Authorization: Bearer`` or ``?token=``); the page and its
        assets hold none (the page passes its own ``?token=`` on to the stream)."""
        if self.token is not None and (request.path == "/metrics" or request.path.startswith("/api/")):
            header = request.headers.get("Authorization", "")
            given = header[7:] if header.startswith("Bearer ") else request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return web.Response(status=401, text="401: a token is needed (?token=... or Authorization: Bearer)\n",
                                    headers={"WWW-Authenticate": "Bearer"})
        response: web.StreamResponse = await handler(request)
        return response

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._pages["index.html"], content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in _STATIC:
            raise web.HTTPNotFound()
        return web.Response(body=self._pages[name], content_type=_STATIC[name], charset="utf-8",
                            headers={"Cache-Control": "no-cache"})

    async def _nodes(self, request: web.Request) -> web.Response:
        return web.json_response(self.view.nodes_snapshot())

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=metrics_text(self.view), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        await response.prepare(request)
        queue: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue(CLIENT_BACKLOG)
        self._clients.add(queue)
        try:
            await response.write(b"retry: 1000\n\n")
            await self._send(response, "snapshot", self.view.page_snapshot())
            while True:
                item = await queue.get()
                if item is None:
                    break
                await self._send(response, *item)
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            self._clients.discard(queue)
        return response

    @staticmethod
    async def _send(response: web.StreamResponse, event: str, data: Any) -> None:
        payload = json.dumps(data, separators=(",", ":"), default=str)
        await response.write(f"event: {event}\ndata: {payload}\n\n".encode())

    # ---------------------------------------------------------- pushing
    def _offer(self, queue: asyncio.Queue[tuple[str, Any] | None], item: tuple[str, Any] | None) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("a web client is %d events behind: disconnecting it", CLIENT_BACKLOG)
            self._clients.discard(queue)
            while not queue.empty():
                queue.get_nowait()
            queue.put_nowait(None)

    def _changed(self, entry: dict[str, Any]) -> None:
        self._changes.append(entry)
        self._dirty.set()

    async def _push(self) -> None:
        """A snapshot to every client when something changed (at most every PUSH_INTERVAL), else every second."""
        loop = asyncio.get_running_loop()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), REFRESH_INTERVAL)
            self._dirty.clear()
            changes = list(self._changes)
            self._changes.clear()
            if self._clients:
                snap = self.view.page_snapshot()
                for queue in list(self._clients):
                    for entry in changes:
                        self._offer(queue, ("change", entry))
                    self._offer(queue, ("snapshot", snap))
            pushed = loop.time()
            await asyncio.sleep(max(0.0, pushed + PUSH_INTERVAL - loop.time()))
