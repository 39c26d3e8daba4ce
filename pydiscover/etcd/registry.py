"""The etcd registry: each node's registration under a lease, the prefix watched.

Keys: ``<prefix>/nodes/<instance id>`` = JSON ``{"address", "port", "hostname",
"weight", "pid"}`` (:class:`~pydiscover.registry.Registration`), under a lease of
:func:`lease_ttl` seconds kept alive every third of it.  Each node lists the prefix once,
then watches it from the next revision (no polling), and hands the runtime every other
registration after each change.

Failure behaviour, the part users rely on:

* etcd unreachable at :meth:`EtcdRegistry.open`: :class:`TransportUnavailable` naming the
  URL, and nothing is left registered or running.
* etcd lost later (killed, partitioned, frozen: a keep-alive or a watch fails, or a call
  outlives its timeout): the members last known are kept, so nobody is removed because
  of the outage (removal stays the hellos' job, on UDP).  The connection is retried with
  jittered exponential backoff; once back, the lease is renewed (or, if it expired, a new
  one granted), the registration written again, and the watch resumed from the last
  revision seen, or the prefix listed again if that revision was compacted, so no change
  is missed.
* :meth:`EtcdRegistry.close` revokes the lease: the key goes at once.
* Our own key deleted by someone else: written again at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
from collections.abc import Mapping
from typing import Any

from ..config import Options
from ..errors import TransportUnavailable
from ..registry import MembersListener, Registration, Registry, decode_registration
from . import client as etcd_client
from .url import EtcdConfig, parse_etcd_url

log = logging.getLogger("pydiscover.etcd")


#: etcd grants no lease shorter than this (with its default timers it raises 1 s to 2 s).
MIN_LEASE_TTL = 2


def lease_ttl(node_timeout: float) -> int:
    """The lease's TTL: ``node_timeout`` rounded up, never below etcd's minimum.

    A crashed node's key then lasts about as long as its entry in its peers' tables.
    """
    return max(MIN_LEASE_TTL, math.ceil(node_timeout))


class EtcdRegistry(Registry):
    """Registers one node in etcd and watches the others (see the module's documentation).

    ``url``: ``etcd://[user:password@]host:port[,host:port...]/prefix`` or ``etcds://``
    with ``?ca=&cert=&key=`` (see :mod:`pydiscover.etcd.url`); the keyword arguments of
    the same names win over the URL's.  ``call_timeout`` bounds every etcd call (and so
    how long a silent server goes unnoticed); ``max_backoff`` caps the wait between
    reconnections.
    """

    def __init__(
        self,
        url: str,
        *,
        node_timeout: float | None = None,
        hello_interval: float = 0.5,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        call_timeout: float = 2.0,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        super().__init__()
        config = parse_etcd_url(url)
        overrides: dict[str, Any] = {name: value for name, value in
                     (("ca", ca), ("cert", cert), ("key", key), ("username", username), ("password", password))
                     if value is not None}
        if overrides:
            from dataclasses import replace

            if any(name in overrides for name in ("ca", "cert", "key")) and not config.tls:
                raise ValueError(f"registry {config.display!r}: ca, cert and key are TLS files: use etcds://")
            config = replace(config, **overrides)
            if (config.username is None) != (config.password is None):
                raise ValueError(f"registry {config.display!r}: give both a user name and a password, or neither")
        etcd_client.import_aetcd()  # a missing client fails here, at construction, with the install hint
        self.config: EtcdConfig = config
        self.display_url = config.display
        #: The lease's TTL (s): from ``node_timeout`` if given, else from the node's when it is built.
        self._node_timeout = node_timeout
        self.ttl = lease_ttl(node_timeout if node_timeout is not None else Options.node_timeout)
        self.hello_interval = hello_interval
        self.call_timeout = call_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        #: This node's key, once opened.
        self.key: str | None = None
        self._me: Registration | None = None
        self._listener: MembersListener | None = None
        self._members: dict[str, Registration] = {}
        self._revision = 0
        #: The lease's id (an int): calls on it go through the client of the moment.
        self._lease: int | None = None
        self._client: Any = None
        self._endpoint_index = 0
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self._opened = False
        #: Set first thing in a close: the supervisor writes nothing more and ends at its next step,
        #: even if a library call it was in swallowed its cancellation.
        self._closing = False
        self._serialized = etcd_client.Serialized()  # opens and closes
        #: The node's loop: listeners and error reports run there; etcd calls run on etcd_loop().
        self._caller: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------ public
    @property
    def members(self) -> Mapping[str, Registration]:
        return dict(self._members)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def revision(self) -> int:
        """The last etcd revision of the prefix seen (the watch resumes there)."""
        return self._revision

    def route_address(self) -> str | None:
        """The local address on the route to the first etcd endpoint (a UDP ``connect``: nothing is sent)."""
        if self.config.address is not None:
            return self.config.address
        host, port = self.config.endpoints[0]
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
            family, _, _, _, sockaddr = infos[0]
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect(sockaddr)
                address: str = probe.getsockname()[0]
        except OSError:
            return None
        return address

    def advertised_address(self, bound: str) -> str:
        if self.config.address is not None:
            return self.config.address
        return super().advertised_address(bound)

    async def open(self, me: Registration, listener: MembersListener) -> Mapping[str, Registration]:
        if self._opened:
            raise RuntimeError("this registry is open already (one node per registry object)")
        self._opened = True
        self._caller = asyncio.get_running_loop()
        self._listener = listener
        try:
            return await etcd_client.run(self._serialized(self._open(me)))
        except BaseException:
            # Failed, cancelled or timed out: what the attempt got to (a lease, a key) is undone
            # on the etcd loop once the attempt is over, even if it ends after this and nobody
            # waits here any more (a sync start that timed out stops its loop next).
            self._caller = self._listener = None
            self._opened = False
            etcd_client.open_registries.discard(self)
            etcd_client.spawn(self._serialized(self._close()))
            raise

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        self._listener = None  # nothing more is delivered
        try:  # cancel the tasks, revoke, close: each bounded by call_timeout (the lease ends by itself anyway)
            await etcd_client.run_bounded(self._serialized(self._close()), 3 * self.call_timeout + 1,
                                          f"closing the registry {self.display_url}")
        finally:
            self._caller = None

    def adopt_timing(self, node_timeout: float, hello_interval: float) -> None:
        if self._node_timeout is None:
            self.ttl = lease_ttl(node_timeout)
        self.hello_interval = hello_interval

    # ------------------------------------------------------------ on the etcd loop
    async def _open(self, me: Registration) -> Mapping[str, Registration]:
        etcd_client.open_registries.add(self)
        self._closing = False
        self._me = me
        self.key = f"{self.config.prefix}/nodes/{me.iid}"
        try:
            client = await self._connect()
            try:
                await self._register(client, new_lease=True)
                await self._list(client, notify=False)
            except BaseException:
                await self._revoke(client)
                await etcd_client.close(client)
                raise
        except Exception as exc:
            self._me = None
            raise TransportUnavailable(
                f"registry {self.display_url}: etcd unreachable ({etcd_client.describe(exc)})") from exc
        self._client = client
        self._connected = True
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="pydiscover-etcd")
        log.info("registered %s in %s (lease %ds, %d other members)", self.key, self.display_url, self.ttl,
                 len(self._members))
        return dict(self._members)

    async def _close(self) -> None:
        # The supervisor is told to stop first (it then writes nothing more: no key put back
        # after the revoke), the lease is revoked at once, and only then is the supervisor's
        # own clean-up (a watch to cancel) waited for: a slow one cannot delay the revoke.
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
        client = self._client
        if client is not None:
            await self._revoke(client)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        if client is not None:
            await etcd_client.close(client)
        self._connected = False
        self._me = None
        self._members = {}
        self._revision = 0
        etcd_client.open_registries.discard(self)

    def _count(self, reason: str, detail: str = "") -> None:
        self.errors[reason] = self.errors.get(reason, 0) + 1
        etcd_client.call_on(self._caller, self._report, reason, detail)

    def _report(self, reason: str, detail: str) -> None:
        if self._error_listener is not None:
            self._error_listener(reason, detail)

    # ------------------------------------------------------------ connection
    async def _connect(self) -> Any:
        """A client on the first endpoint that answers (starting from the last good one)."""
        client, self._endpoint_index = await etcd_client.connect_first(
            self.config, self._endpoint_index, self.call_timeout, (self.key or self.config.prefix).encode())
        return client

    async def _register(self, client: Any, *, new_lease: bool) -> None:
        """Write our registration under the lease (a new lease if asked, or if ours expired)."""
        assert self._me is not None and self.key is not None
        if self._closing:
            raise ConnectionError("the registry is closing")
        if not new_lease and self._lease is not None:
            response = await client.refresh_lease(self._lease)
            new_lease = response.TTL <= 0
            if new_lease:
                log.warning("etcd lease of %s expired during the outage: registering again", self.key)
        if new_lease or self._lease is None:
            lease = await client.lease(self.ttl)
            self._lease = int(lease.id)
            self.ttl = max(self.ttl, int(lease.ttl or self.ttl))  # etcd may raise it to its minimum
        await self._put_own(client)

    async def _put_own(self, client: Any) -> None:
        assert self._me is not None and self.key is not None
        if self._closing or self._lease is None:  # never a key without a lease (it would outlive us)
            raise ConnectionError("the registry is closing")
        await client.put(self.key.encode(), self._me.to_json(), lease=self._lease)

    async def _revoke(self, client: Any) -> None:
        lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            await asyncio.wait_for(client.revoke_lease(lease), self.call_timeout)
        except Exception as exc:  # the lease then expires by itself within its TTL
            log.warning("could not revoke the etcd lease of %s (it expires within %d s): %s",
                        self.key, self.ttl, etcd_client.describe(exc))

    async def _list(self, client: Any, *, notify: bool = True) -> None:
        """Read every registration (after a compaction: again), and the revision to watch from."""
        response = await client.get_prefix(self.config.nodes_prefix)
        members: dict[str, Registration] = {}
        for kv in response:
            registration = self._decode(kv.key, kv.value)
            if registration is not None:
                members[registration.iid] = registration
        self._revision = int(response.header.revision)
        own = self._me.iid if self._me is not None else None
        members.pop(own or "", None)
        self._set_members(members, notify)

    # ------------------------------------------------------------ running
    async def _supervise(self) -> None:
        """Keep the lease alive and the watch running; on failure, reconnect with backoff."""
        backoff = self.min_backoff
        while not self._closing:
            client = self._client
            try:
                if client is None:
                    client = await self._connect()
                    await self._register(client, new_lease=False)
                    self._client = client
                    if not self._connected:
                        self._connected = True
                        log.warning("etcd %s reachable again: registration renewed, watch resumed from revision %d",
                                    self.display_url, self._revision)
                backoff = self.min_backoff
                await self._session(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is an outage: counted, retried
                if self._closing:
                    return
                if self._connected:
                    self._connected = False
                    log.warning("etcd %s lost (%s); keeping the %d members known, reconnecting",
                                self.display_url, etcd_client.describe(exc), len(self._members))
                self._count("registry_unreachable", f"{self.display_url}: {etcd_client.describe(exc)}")
                self._client = None
                if client is not None:
                    await etcd_client.close(client)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.max_backoff)

    async def _session(self, client: Any) -> None:
        """Watch and keep alive until one of them fails (its error is raised)."""
        aetcd = etcd_client.import_aetcd()
        keepalive = asyncio.get_running_loop().create_task(self._keepalive(client), name="pydiscover-etcd-keepalive")
        try:
            while not self._closing:
                # From the last revision seen, inclusive: a watch that broke in the middle of a
                # revision's events (a transaction) replays it whole; applying an event twice is harmless.
                watch = await client.watch_prefix(self.config.nodes_prefix, start_revision=self._revision)
                try:
                    await self._follow(client, watch, keepalive)
                except aetcd.RevisionCompactedError:
                    self.errors["relisted"] = self.errors.get("relisted", 0) + 1
                    log.info("etcd compacted past revision %d: listing %s again", self._revision,
                             self.config.nodes_prefix.decode())
                    await self._list(client)
                finally:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(watch.cancel(), self.call_timeout)
        finally:
            keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await keepalive

    async def _follow(self, client: Any, watch: Any, keepalive: asyncio.Task[None]) -> None:
        """Apply watch events until the watch or the keep-alive fails (its error is raised)."""
        events = watch.__aiter__()
        next_event: asyncio.Future[Any] | None = None
        try:
            while True:
                next_event = asyncio.ensure_future(events.__anext__())
                done, _ = await asyncio.wait({next_event, keepalive}, return_when=asyncio.FIRST_COMPLETED)
                if next_event not in done:
                    keepalive.result()  # raises its error
                    raise ConnectionError("keep-alive stopped")
                try:
                    event = next_event.result()  # raises the watch's error
                except StopAsyncIteration:
                    raise ConnectionError("the watch ended") from None
                next_event = None
                if not self._apply(event):
                    log.warning("the registration %s was deleted: writing it again", self.key)
                    await self._put_own(client)
        finally:
            if next_event is not None and not next_event.done():
                next_event.cancel()
            if next_event is not None:
                with contextlib.suppress(BaseException):
                    await next_event  # retrieved: no "exception never retrieved" at exit

    async def _keepalive(self, client: Any) -> None:
        """Refresh the lease every third of its TTL; an expired lease is an error (re-registered on reconnect)."""
        while True:
            await asyncio.sleep(self.ttl / 3)
            if self._closing:
                return
            response = await asyncio.wait_for(client.refresh_lease(self._lease), self.call_timeout)
            if response.TTL <= 0:
                raise ConnectionError("the lease expired")

    # ------------------------------------------------------------ members
    def _apply(self, event: Any) -> bool:
        """Apply one watch event; ``False`` if it deleted our own registration (write it again)."""
        kv = event.kv
        self._revision = max(self._revision, int(kv.mod_revision))
        prefix = self.config.nodes_prefix
        iid = bytes(kv.key)[len(prefix):].decode(errors="replace")
        own = self._me is not None and iid == self._me.iid
        if getattr(event.kind, "value", event.kind) == "DELETE":
            if own:
                return False
            if iid in self._members:
                members = dict(self._members)
                del members[iid]
                self._set_members(members, True)
            return True
        if own:
            return True
        registration = self._decode(kv.key, kv.value)
        members = dict(self._members)
        if registration is None:
            members.pop(iid, None)
        else:
            members[iid] = registration
        self._set_members(members, True)
        return True

    def _decode(self, key: bytes, value: bytes) -> Registration | None:
        iid = bytes(key)[len(self.config.nodes_prefix):].decode(errors="replace")
        registration = decode_registration(iid, value) if "/" not in iid else None
        if registration is None:
            self.errors["invalid_registrations"] = self.errors.get("invalid_registrations", 0) + 1
            log.debug("ignoring %r in etcd: not a registration", key)
        return registration

    def _set_members(self, members: dict[str, Registration], notify: bool) -> None:
        if members == self._members:
            return
        self._members = members
        if notify:
            etcd_client.call_on(self._caller, self._deliver, dict(members))

    def _deliver(self, members: dict[str, Registration]) -> None:
        """On the node's loop: hand the members to the runtime (unless closed meanwhile)."""
        listener = self._listener
        if listener is None:
            return
        try:
            listener(members)
        except Exception:
            log.exception("internal error handling a change of etcd members")


__all__ = ["MIN_LEASE_TTL", "EtcdRegistry", "lease_ttl", "parse_etcd_url"]
