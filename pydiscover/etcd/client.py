"""One etcd connection: the first endpoint that answers, with credentials and TLS.

The client is aetcd (``pip install pydiscover-lan[etcd]``): an asyncio etcd v3 client that
imports and works with current grpcio and protobuf (etcd3 0.12 no longer imports with
them).  aetcd 1.0 opens only plaintext channels; for ``etcds://`` the channel it asks
for is made a TLS one, for the connecting task only (a context variable), so other
clients in the process are untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from .url import EtcdConfig

log = logging.getLogger("pydiscover.etcd")

T = TypeVar("T")

INSTALL_HINT = "the etcd registry needs the 'aetcd' package: pip install pydiscover-lan[etcd]"

#: gRPC channel options: reconnect fast after an outage (gRPC's default backoff can lag
#: seconds behind a restarted server), and notice a silent server on an idle stream.
#: (``grpc.min_reconnect_backoff_ms`` is also how long one connection attempt may take:
#: :func:`make_client` sets it to the call timeout.)
CHANNEL_OPTIONS: dict[str, Any] = {
    "grpc.initial_reconnect_backoff_ms": 200,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 5000,
    "grpc.keepalive_timeout_ms": 2000,
    "grpc.http2.ping_timeout_ms": 2000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
}

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def etcd_loop() -> asyncio.AbstractEventLoop:
    """The one event loop every etcd call in this process runs on (a daemon thread, started once).

    gRPC's asyncio layer polls for every loop of the process from one place and breaks
    when several loops use it at once, or when one of them closes (each sync
    ``Discovery`` runs its own loop): so etcd clients live on this loop only, and the
    registries hand results to their node's loop.
    """
    global _loop
    if _forked_while_open:
        raise RuntimeError(
            "this process was forked while an etcd registry was open in its parent: gRPC cannot be used "
            "here (it would break the parent's connection too).  Start pydiscover after forking, or use "
            "the 'spawn' start method"
        )
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="pydiscover-etcd", daemon=True).start()
            _loop = loop
        return _loop


#: Registries open in this process (weakly held): a fork while one is open leaves gRPC
#: shared between parent and child, so the child may not use etcd at all.
open_registries: weakref.WeakSet[Any] = weakref.WeakSet()
_forked_while_open = False


def spawn(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start ``coro`` on :func:`etcd_loop`; nothing waits for it here."""
    return asyncio.run_coroutine_threadsafe(coro, etcd_loop())


async def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on :func:`etcd_loop` and wait for it on the calling loop (cancelling it too)."""
    return await asyncio.wrap_future(spawn(coro))


async def run_bounded(coro: Coroutine[Any, Any, None], limit: float, what: str) -> None:
    """Run ``coro`` on :func:`etcd_loop`, waiting at most ``limit`` seconds; past that it goes on
    there unwatched (logged), never cancelled half-way."""
    try:
        await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(spawn(coro))), limit)
    except asyncio.TimeoutError:
        log.warning("%s took over %.0f s; it goes on in the background", what, limit)


class Serialized:
    """Runs coroutines one at a time, in the order given, on the etcd loop: a registry's or a
    coordinator's opens and closes (a close after a cancelled open waits for that open to end)."""

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None  # made on the etcd loop, the only one that uses it

    async def __call__(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            return await coro


def call_on(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on ``loop`` (a node's, from the etcd loop); nothing if it is gone or closed."""
    if loop is not None:
        with contextlib.suppress(RuntimeError):  # the node's loop closed: nobody to tell
            loop.call_soon_threadsafe(fn, *args)


def _forget_loop_after_fork() -> None:
    global _loop, _forked_while_open
    _loop = None  # the thread does not exist in the child
    _forked_while_open = len(open_registries) > 0
    open_registries.clear()


os.register_at_fork(after_in_child=_forget_loop_after_fork)

_tls_credentials: contextvars.ContextVar[Any] = contextvars.ContextVar("pydiscover_etcd_tls", default=None)
_tls_installed = False


def import_aetcd() -> Any:
    """The aetcd module, or an ImportError that says how to install it."""
    try:
        import aetcd
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return aetcd


def _install_tls_channels(aetcd: Any) -> None:
    """Make aetcd's channel factory open a TLS channel when the connecting task asks for one."""
    global _tls_installed
    if _tls_installed:
        return
    import grpc.aio

    rpc = aetcd.rpc
    plain = rpc.insecure_channel

    def channel(target: str, options: Any = ()) -> Any:
        credentials = _tls_credentials.get()
        if credentials is None:
            return plain(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    rpc.insecure_channel = channel
    _tls_installed = True


def _read(path: str | None) -> bytes | None:
    return Path(path).expanduser().read_bytes() if path is not None else None


def make_client(config: EtcdConfig, endpoint: tuple[str, int], timeout: float) -> Any:
    """An aetcd client for one endpoint (not connected yet); ``timeout`` bounds every call."""
    aetcd = import_aetcd()
    host, port = endpoint
    client = aetcd.Client(host=host, port=port, username=config.username, password=config.password,
                          timeout=timeout, connect_wait_timeout=timeout,
                          options={**CHANNEL_OPTIONS, "grpc.min_reconnect_backoff_ms": int(timeout * 1000)})
    if config.tls:
        import grpc

        _install_tls_channels(aetcd)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(config.ca), private_key=_read(config.key), certificate_chain=_read(config.cert))
        client.pydiscover_tls = credentials  # read by connect() below
    return client


async def connect(client: Any) -> None:
    """Open ``client``'s channel (a TLS one if it was made for ``etcds://``)."""
    credentials = getattr(client, "pydiscover_tls", None)
    token = _tls_credentials.set(credentials)
    try:
        await client.connect()
    finally:
        _tls_credentials.reset(token)


async def close(client: Any, timeout: float = 2.0) -> None:
    """Close ``client`` within ``timeout``; never raises (it is called on the way out of failures)."""
    try:
        await asyncio.wait_for(client.close(), timeout)
        for _ in range(3):  # let gRPC's call tasks see the channel closed before a loop may close
            await asyncio.sleep(0)
    except Exception as exc:  # a client that failed may fail to close too
        log.debug("closing an etcd client: %r", exc)


async def connect_first(config: EtcdConfig, start: int, timeout: float, probe_key: bytes) -> tuple[Any, int]:
    """A client on the first endpoint that answers a read of ``probe_key`` (so it also takes our
    credentials), trying them in order from index ``start``; the client and its index.

    ``ConnectionError`` naming every endpoint's failure if none answers.
    """
    errors: list[str] = []
    endpoints = config.endpoints
    for i in range(len(endpoints)):
        index = (start + i) % len(endpoints)
        client = make_client(config, endpoints[index], timeout)
        try:
            await connect(client)
            await client.get(probe_key)
        except Exception as exc:
            await close(client)
            errors.append(f"{endpoints[index][0]}:{endpoints[index][1]}: {describe(exc)}")
            continue
        except BaseException:  # cancelled: no client left behind
            await close(client)
            raise
        return client, index
    raise ConnectionError("; ".join(errors))


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs and errors (the message alone when it is just the type's name)."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text
