"""Redis transport: the same datagrams over Redis pub/sub, where broadcast does not reach.

Every node publishes each datagram the core produces (hellos, goodbyes, channel
messages: sealed when a key is set) on one Redis channel, ``pydiscover:<namespace>``,
and subscribes to it, so Redis plays the part of the broadcast domain.  The transport
never parses a packet: encryption, replay protection and the election are unchanged.

Framing: each Redis message is ``0x01, len(host), host, port (2 bytes, big-endian)``
followed by the datagram, where ``(host, port)`` is the local address of the sender's
Redis connection.  Receivers hand ``(host, port)`` to the core as the datagram's source,
so ``Node.address`` is the peer's IP on the route to Redis (like a UDP source address)
and ``Node.port`` the ephemeral TCP port of that connection (it identifies the
connection; nothing listens there).

Resilience: one supervisor task per open transport owns the connection (a client for
PUBLISH and a subscribed PubSub connection).  When either fails, or the server stops
answering pings, the link is reported down (the core then freezes removals and
elections), queued hellos are dropped and counted, and it reconnects with jittered
exponential backoff, resubscribes, and reports the link up (the core says hello at
once).  Nothing is raised into user code after :meth:`RedisTransport.open`.

Channel messages are not lost silently: those sent while the link is down (and those
queued or in flight when it failed) are held, up to ``outage_buffer`` of them, and
published in order, as they are, once the peers are back (see
:meth:`RedisTransport.send_message`); a message that cannot be held is refused
(``send`` returns ``False``) and every message that is never published is counted as
``unsent``.

The ``redis`` package is imported only when a Redis transport is built, so the rest of
pydiscover works without it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import re
import struct
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..config import DEFAULT_NAMESPACE, check_namespace
from ..errors import TransportUnavailable
from .base import Address, Receiver, Transport

log = logging.getLogger("pydiscover.transports.redis")

INSTALL_HINT = "the Redis transport needs the 'redis' package: pip install pydiscover-lan[redis]"
#: Every cluster's channel is this prefix plus its namespace.
CHANNEL_PREFIX = "pydiscover:"
FRAME_VERSION = 1
#: Hellos kept behind held messages (their seqs must not overtake the messages'); more are dropped.
HELLOS_HELD = 8
#: Query parameters that would turn the bytes we carry into text.
_FORBIDDEN_QUERY = ("decode_responses", "encoding", "encoding_errors", "connection_class", "protocol")
_DB_PATH = re.compile(r"/?|/\d+")


def _import_redis() -> Any:
    """``redis.asyncio`` and friends, or an ImportError that says how to install them."""
    try:
        import redis.asyncio
        import redis.asyncio.connection
        import redis.asyncio.retry
        import redis.backoff
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return redis


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)[1]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))
    except ValueError:
        return "<unparsable URL>"


def parse_redis_url(url: Any) -> tuple[str, str | None]:
    """Check a ``redis://``/``rediss://`` URL now; return it without ``namespace`` and that namespace.

    Raises ``TypeError``/``ValueError`` naming the URL (password hidden).  Query
    parameters other than ``namespace`` go to redis-py's connection (``ssl_ca_certs``,
    ``socket_timeout``, ...) and are checked against it here, not at connect time.
    """
    if not isinstance(url, str):
        raise TypeError(f"transport must be a URL string or a Transport, got {type(url).__name__}")
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"transport URL {shown!r}: {exc}") from None
    if parts.scheme.lower() not in ("redis", "rediss"):
        raise ValueError(
            f"transport URL {shown!r}: unsupported scheme {parts.scheme!r}; "
            "use redis://host:port/db or rediss://host:port/db (TLS)"
        )
    if not parts.hostname:
        raise ValueError(f"transport URL {shown!r}: no host (expected redis://host:port/db)")
    if port == 0:
        raise ValueError(f"transport URL {shown!r}: port must be 1-65535")
    if not _DB_PATH.fullmatch(parts.path):
        raise ValueError(f"transport URL {shown!r}: the path must be a database number, like /0")
    if parts.fragment:
        raise ValueError(f"transport URL {shown!r}: unexpected fragment #{parts.fragment}")
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ValueError(f"transport URL {shown!r}: malformed query string") from None
    namespaces = [value for key, value in query if key == "namespace"]
    if len(namespaces) > 1:
        raise ValueError(f"transport URL {shown!r}: namespace given more than once")
    namespace = check_namespace(namespaces[0], "namespace in the transport URL") if namespaces else None
    rest = [(key, value) for key, value in query if key != "namespace"]
    for key, _ in rest:
        if key in _FORBIDDEN_QUERY:
            raise ValueError(f"transport URL {shown!r}: {key} cannot be set (the transport carries raw bytes)")
    clean = urlunsplit(parts._replace(query=urlencode(rest)))
    redis = _import_redis()
    try:
        kwargs = dict(redis.asyncio.connection.parse_url(clean))
        connection_class = kwargs.pop("connection_class", redis.asyncio.connection.Connection)
        connection_class(**kwargs)  # no I/O: checks the query parameters' names and values
    except (TypeError, ValueError, redis.RedisError) as exc:
        raise ValueError(f"transport URL {shown!r}: {exc}") from None
    return clean, namespace


def frame_header(address: Address | None) -> bytes:
    """The prefix carrying the sender's ``(host, port)``."""
    host, port = (str(address[0]), int(address[1])) if address else ("", 0)
    raw = host.encode("ascii", "replace")
    if len(raw) > 255:
        raw = b""
    return bytes((FRAME_VERSION, len(raw))) + raw + struct.pack("!H", port & 0xFFFF)


def unframe(message: bytes) -> tuple[bytes, Address] | None:
    """``(datagram, (host, port))``, or ``None`` for anything that is not one of our frames."""
    if len(message) < 4 or message[0] != FRAME_VERSION:
        return None
    end = 2 + message[1]
    if len(message) < end + 2:
        return None
    try:
        host = message[2:end].decode("ascii")
    except UnicodeDecodeError:
        return None
    (port,) = struct.unpack_from("!H", message, end)
    return message[end + 2 :], (host, port)


class _Link:
    """One connected session: a client that publishes and a PubSub subscribed to the channel."""

    def __init__(self, client: Any, pubsub: Any, local: Address | None) -> None:
        self.client = client
        self.pubsub = pubsub
        self.local = local
        self.header = frame_header(local)

    async def close(self) -> None:
        for thing in (self.pubsub, self.client):
            if thing is None:
                continue
            closer = getattr(thing, "aclose", None) or thing.close  # aclose: redis >= 5.0.1
            try:
                await asyncio.wait_for(closer(), 1.0)
            except Exception as exc:  # closing a broken connection may fail; it is gone either way
                log.debug("closing a Redis connection: %r", exc)


class RedisTransport(Transport):
    """Datagrams over Redis pub/sub on channel ``pydiscover:<namespace>``.

    ``url`` is ``redis://[[user]:password@]host[:port][/db][?namespace=NAME&...]`` or
    ``rediss://`` (TLS); other query parameters go to redis-py (``ssl_ca_certs=...``).
    ``namespace`` (here or in the URL, not both with different values) names the
    cluster; the database number does not separate clusters, since Redis pub/sub is
    server-wide.  ``send`` queues at most ``queue_size`` datagrams for one writer task,
    which publishes them in order; while the link is down hellos are dropped and counted,
    and channel messages are held, at most ``outage_buffer`` of them (0: none), until
    the link is back and as many subscribers as before have resubscribed, or
    ``resubscribe_wait`` seconds have passed (default: 1.5 times ``max_backoff``).
    Reconnection waits from ``min_backoff`` doubling to ``max_backoff`` seconds (with
    jitter).  An idle connection is pinged every ``ping_interval`` seconds and counts as
    lost after ``ping_timeout`` seconds without any reply.  ``close`` waits at most
    ``close_timeout`` seconds for queued datagrams (a goodbye) to go out.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str | None = None,
        queue_size: int = 1024,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
        connect_timeout: float = 3.0,
        ping_interval: float = 0.5,
        ping_timeout: float = 2.0,
        close_timeout: float = 1.0,
        outage_buffer: int = 1024,
        resubscribe_wait: float | None = None,
    ) -> None:
        super().__init__()
        self.url, from_url = parse_redis_url(url)
        self.display_url = redact(self.url)
        if namespace is not None:
            namespace = check_namespace(namespace)
            if from_url is not None and from_url != namespace:
                raise ValueError(
                    f"namespace {namespace!r} conflicts with namespace={from_url!r} in the transport URL; "
                    "give it once"
                )
        self.namespace = namespace or from_url or DEFAULT_NAMESPACE
        self.channel = CHANNEL_PREFIX + self.namespace
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if isinstance(outage_buffer, bool) or not isinstance(outage_buffer, int) or outage_buffer < 0:
            raise ValueError(f"outage_buffer must be an int >= 0 (messages), got {outage_buffer!r}")
        if resubscribe_wait is None:
            resubscribe_wait = 1.5 * max_backoff if isinstance(max_backoff, (int, float)) else max_backoff
        for name, value in (
            ("min_backoff", min_backoff),
            ("max_backoff", max_backoff),
            ("connect_timeout", connect_timeout),
            ("ping_interval", ping_interval),
            ("ping_timeout", ping_timeout),
            ("close_timeout", close_timeout),
            ("resubscribe_wait", resubscribe_wait),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 3600:
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if max_backoff < min_backoff:
            raise ValueError(f"max_backoff ({max_backoff}) must be >= min_backoff ({min_backoff})")
        if ping_timeout <= ping_interval:
            raise ValueError(f"ping_timeout ({ping_timeout}) must be greater than ping_interval ({ping_interval})")
        self.queue_size = queue_size
        self.min_backoff = float(min_backoff)
        self.max_backoff = float(max_backoff)
        self.connect_timeout = float(connect_timeout)
        self.ping_interval = float(ping_interval)
        self.ping_timeout = float(ping_timeout)
        self.close_timeout = float(close_timeout)
        self.outage_buffer = outage_buffer
        self.resubscribe_wait = float(resubscribe_wait)
        self._receive: Receiver | None = None
        #: ``(datagram, is_message)`` for the writer, in order.
        self._queue: asyncio.Queue[tuple[bytes, bool]] | None = None
        #: ``(datagram, is_message, since)`` waiting for the link and the peers, oldest first:
        #: the messages, and the hellos sent after them (seqs must reach peers in order).
        self._held: collections.deque[tuple[bytes, bool, float]] = collections.deque()
        self._held_messages = 0
        self._warned_numsub = False
        #: After a reconnect, until the held messages are out: new messages are held too (order).
        self._holding = False
        #: What the writer is publishing now: back to the front of ``_held`` if the link fails.
        self._in_flight: tuple[bytes, bool] | None = None
        #: How many subscribers the last publish reached (ourselves included), and how many
        #: were there when the link failed: held messages wait for as many to be back.
        self._subscribers = 0
        self._wanted_back = 0
        self._link: _Link | None = None
        self._task: asyncio.Task[None] | None = None
        self._up = False
        self._closing = False
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"RedisTransport({self.display_url!r}, namespace={self.namespace!r})"

    @property
    def connected(self) -> bool:
        """Whether the link to Redis is up (subscribed and able to publish)."""
        return self._up

    @property
    def local_address(self) -> Address | None:
        """``(ip, port)`` of the publishing connection: what peers see as this node's address."""
        return self._link.local if self._link is not None else None

    # ------------------------------------------------------------ lifecycle
    async def open(self, receive: Receiver) -> None:
        if self._task is not None:
            raise RuntimeError("RedisTransport is already open")
        self._closing = False
        self._receive = receive
        self._queue = asyncio.Queue(self.queue_size)
        self._held.clear()
        self._held_messages = 0
        self._holding = False
        self._in_flight = None
        self._subscribers = self._wanted_back = 0
        try:
            link = await self._connect()
        except Exception as exc:
            self._receive = None
            self._queue = None
            raise TransportUnavailable(f"cannot connect to Redis at {self.display_url}: {exc}") from exc
        self._link = link
        self._up = True
        log.debug("connected to %s as %s, channel %s", self.display_url, link.local, self.channel)
        self._task = asyncio.get_running_loop().create_task(self._supervise(link), name=f"pydiscover-{self!r}")

    async def close(self) -> None:
        queue = self._queue
        if queue is None or self._closing:
            return
        self._closing = True
        if self._up:
            # Let what is queued or in flight (the goodbye) go out, briefly: close must stay prompt.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(queue.join(), self.close_timeout)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=self.close_timeout + 1.0)
        link, self._link = self._link, None
        self._up = False
        if link is not None:
            await link.close()
        self._hold_unpublished()
        if self._held_messages:
            self._report_error("unsent", f"{self._held_messages} channel messages never published: closed before "
                               f"the link to Redis at {self.display_url} was back", self._held_messages)
            log.warning("closing with %d channel messages not published (unsent)", self._held_messages)
        self._held.clear()
        self._held_messages = 0
        self._queue = None
        self._receive = None

    # ------------------------------------------------------------- sending
    def send(self, datagram: bytes) -> None:
        queue = self._queue
        if queue is None or self._closing:
            self._count_error("not_open")
            return
        if not self._up:
            self._count_and_log("not_connected", "Redis link down: dropping hellos until reconnected")
            return
        if self._held:  # behind the held messages: a newer seq must not reach peers before them
            if len(self._held) - self._held_messages < HELLOS_HELD:
                self._held.append((bytes(datagram), False, time.monotonic()))
            else:
                self._count_error("not_connected")
            return
        try:
            queue.put_nowait((bytes(datagram), False))
        except asyncio.QueueFull:
            self._count_and_log("queue_full", f"send queue full ({self.queue_size} datagrams): dropping")

    def send_message(self, datagram: bytes) -> bool:
        """Publish a channel message, or hold it through an outage; ``False`` (counted ``unsent``) if neither.

        Held messages are published in order, as they are, before anything sent after
        them, once the link is back and as many subscribers as the last publish reached
        have resubscribed (at most ``resubscribe_wait`` seconds), so peers that
        reconnect a little later than this node still get them.  A message in flight
        when the link failed is sent again: receivers drop the copy they may already
        have by its seq.  One held longer than ``message_lifetime`` (the replay window:
        sealed peers would refuse it) is dropped then, counted ``unsent``.
        """
        queue = self._queue
        if queue is None or self._closing:
            self._count_and_log("unsent", "the Redis transport is not open: channel message not sent")
            return False
        if self._up and not self._holding and not self._held:
            try:
                queue.put_nowait((bytes(datagram), True))
                return True
            except asyncio.QueueFull:
                self._count_and_log("unsent", f"send queue full ({self.queue_size} datagrams): message not sent")
                return False
        if self._held_messages < self.outage_buffer:
            self._held.append((bytes(datagram), True, time.monotonic()))
            self._held_messages += 1
            return True
        self._count_and_log(
            "unsent", f"Redis link down and {self.outage_buffer} channel messages already held: message not sent"
        )
        return False

    def _hold_unpublished(self) -> None:
        """The link failed: put the channel messages not surely published back in front of ``_held``.

        Hellos are dropped (counted ``not_connected``), queued or held: the core says hello
        again once the link is back.  Beyond ``outage_buffer`` messages the newest are
        dropped, counted ``unsent``.
        """
        now = time.monotonic()
        messages: list[tuple[bytes, bool, float]] = []
        if self._in_flight is not None and self._in_flight[1]:
            messages.append((self._in_flight[0], True, now))
        self._in_flight = None
        hellos = 0
        queue = self._queue
        while queue is not None:
            try:
                datagram, is_message = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
            queue.task_done()
            if is_message:
                messages.append((datagram, True, now))
            else:
                hellos += 1
        held = [item for item in self._held if item[1]]
        hellos += len(self._held) - len(held)
        if hellos:
            self._report_error("not_connected", f"{hellos} hellos dropped: the Redis link is down", hellos)
        kept = messages + held
        excess = len(kept) - self.outage_buffer
        if excess > 0:
            del kept[self.outage_buffer:]
            self._report_error("unsent", f"{excess} channel messages dropped: more than outage_buffer "
                               f"({self.outage_buffer}) waiting for the Redis link", excess)
        self._held = collections.deque(kept)
        self._held_messages = len(kept)

    # ---------------------------------------------------------- connection
    def _connection_options(self) -> dict[str, Any]:
        redis = _import_redis()
        return {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.connect_timeout,
            # We reconnect ourselves (and tell the core); redis-py must not retry behind our back.
            "retry": redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), 0, supported_errors=()),
            "health_check_interval": 0,
        }

    async def _connect(self) -> _Link:
        """Connect, subscribe and wait for the subscription to be confirmed; bounded by ``connect_timeout``."""
        redis = _import_redis()
        client = redis.asyncio.Redis.from_url(self.url, single_connection_client=True, **self._connection_options())
        link = _Link(client, None, None)
        try:
            await asyncio.wait_for(self._handshake(link), self.connect_timeout)
        except asyncio.TimeoutError:
            await link.close()
            raise TimeoutError(f"no answer within {self.connect_timeout:g}s") from None
        except BaseException:
            await link.close()
            raise
        return link

    async def _handshake(self, link: _Link) -> None:
        await link.client.ping()
        link.local = _local_address(link.client)
        link.header = frame_header(link.local)
        link.pubsub = link.client.pubsub()
        await link.pubsub.subscribe(self.channel)
        while True:  # the confirmation is the first reply on that connection; bounded by wait_for
            message = await link.pubsub.get_message(timeout=self.connect_timeout)
            if message is not None and message.get("type") == "subscribe":
                return

    async def _supervise(self, link: _Link) -> None:
        """Serve ``link`` until it fails, then reconnect and serve again, until cancelled by close."""
        while True:
            try:
                await self._serve(link)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("lost the connection to Redis at %s: %s", self.display_url, exc or type(exc).__name__)
            self._up = False
            self._link = None
            self._report_error("connection_lost", f"lost the connection to Redis at {self.display_url}")
            if not self._holding:  # (failing again before the release: the count before the first failure)
                self._wanted_back = self._subscribers
            self._hold_unpublished()
            await link.close()
            if self._closing:
                # close() cancelled us, but Python 3.10's wait_for (in link.close) can swallow
                # a cancellation that arrives as its inner call finishes: end here regardless.
                return
            self._notify(False)
            link = await self._reconnect()
            self._link = link
            self._holding = True  # messages wait for the peers to resubscribe (_release_held)
            self._up = True
            log.warning("reconnected to Redis at %s", self.display_url)
            self._notify(True)

    async def _reconnect(self) -> _Link:
        """Retry with jittered exponential backoff until connected (or cancelled by close)."""
        delay = self.min_backoff
        attempt = 0
        while True:
            await asyncio.sleep(min(delay, self.max_backoff) * self._rng.uniform(0.75, 1.0))
            if self._closing:  # (a cancellation lost by 3.10's wait_for: see _supervise)
                raise asyncio.CancelledError
            attempt += 1
            try:
                return await self._connect()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._report_error("connect_failed", f"reconnecting to Redis at {self.display_url} failed: {exc}")
                (log.warning if attempt == 1 else log.debug)(
                    "reconnecting to Redis at %s failed (attempt %d): %s", self.display_url, attempt, exc
                )
            delay = min(delay * 2, self.max_backoff)

    def _notify(self, up: bool) -> None:
        try:
            self._link_changed(up)
        except Exception:  # the listener is the runtime; its failure must not stop reconnecting
            log.exception("link listener failed")

    async def _serve(self, link: _Link) -> None:
        tasks = {asyncio.ensure_future(self._read(link)), asyncio.ensure_future(self._write(link))}
        release = asyncio.ensure_future(self._release_held(link)) if self._holding else None
        if release is not None:
            tasks.add(release)
        try:
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                if release is None or done != {release} or release.exception() is not None:
                    break
                tasks.discard(release)  # the held messages are queued: the reader and writer go on
                release = None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None:
                raise exc
        raise ConnectionError("connection closed")

    async def _release_held(self, link: _Link) -> None:
        """After a reconnect: wait (bounded) for as many subscribers as before, then queue what is held."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.resubscribe_wait
        wanted = self._wanted_back
        back = 0
        while wanted > 1 and loop.time() < deadline:
            try:
                counts = await link.client.pubsub_numsub(self.channel)
            except _import_redis().ResponseError as exc:  # an ACL without PUBSUB: wait the whole time
                if not self._warned_numsub:
                    self._warned_numsub = True
                    log.warning("cannot count the subscribers of %s (%s): held messages wait resubscribe_wait "
                                "(%.1f s) after each reconnect", self.channel, exc, self.resubscribe_wait)
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                break
            back = int(counts[0][1]) if counts else 0
            if back >= wanted:
                break
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
        else:
            if wanted > 1 and self._held_messages:
                log.warning("%d of %d subscribers back on %s after %.1f s: publishing the held messages anyway",
                            back, wanted, self.channel, self.resubscribe_wait)
        queue = self._queue
        assert queue is not None
        lifetime = self.message_lifetime
        while self._held:
            datagram, is_message, since = self._held[0]
            if is_message and lifetime is not None and time.monotonic() - since > lifetime:
                self._report_error("unsent", f"a channel message held {time.monotonic() - since:.0f} s, longer "
                                   f"than peers accept (message_lifetime {lifetime:g} s): dropped")
            else:
                await queue.put((datagram, is_message))  # nothing is lost if cancelled while waiting here
            self._held.popleft()
            self._held_messages -= is_message
        self._holding = False

    async def _read(self, link: _Link) -> None:
        """Deliver messages; ping when idle, and give up after ``ping_timeout`` without a reply."""
        loop = asyncio.get_running_loop()
        last_heard = loop.time()
        while True:
            message = await link.pubsub.get_message(timeout=self.ping_interval)
            now = loop.time()
            if message is None:
                silent = now - last_heard
                if silent >= self.ping_timeout:
                    raise ConnectionError(f"no reply from Redis for {silent:.1f}s")
                if silent >= self.ping_interval:
                    await link.pubsub.ping()
                continue
            last_heard = now
            if message.get("type") == "message":
                self._deliver(message.get("data"))

    def _deliver(self, data: Any) -> None:
        parsed = unframe(data) if isinstance(data, bytes) else None
        if parsed is None:
            self._count_and_log("bad_frame", f"ignoring a message on {self.channel} that is not a pydiscover frame")
            return
        receive = self._receive
        if receive is not None:
            try:
                receive(*parsed)
            except Exception:  # the runtime guards itself; this only keeps the reader alive
                self._count_error("internal_error")
                log.exception("receiver failed on a datagram from %s", parsed[1])

    async def _write(self, link: _Link) -> None:
        """The one writer: publishes queued datagrams in order."""
        queue = self._queue
        assert queue is not None
        response_error = _import_redis().ResponseError
        while True:
            item = await queue.get()
            self._in_flight = item
            try:
                self._subscribers = int(await link.client.publish(self.channel, link.header + item[0]))
            except response_error as exc:
                # Redis refused this one (an ACL without PUBLISH, a size limit): the
                # connection is fine, so drop the datagram rather than the link.
                self._count_and_log("send_error", f"Redis refused a publish on {self.channel}: {exc}")
                if item[1]:
                    self._count_error("unsent")
            except Exception as exc:
                self._report_error("send_error", f"publish to Redis at {self.display_url} failed: {exc!r}")
                raise  # (in flight: _hold_unpublished sends a message again)
            finally:
                queue.task_done()
            self._in_flight = None


def _local_address(client: Any) -> Address | None:
    """The local ``(ip, port)`` of the client's connection, if redis-py lets us see it."""
    connection = getattr(client, "connection", None)
    writer = getattr(connection, "_writer", None)
    if writer is None:
        return None
    sockname = writer.get_extra_info("sockname")
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return (str(sockname[0]), int(sockname[1]))
    return None
