"""The etcd coordinator: mastership held with a leader key under this node's lease.

With ``coordinator="etcd://..."`` the core is fenced (``DiscoveryCore.set_fenced``): the
election names who *should* be master, and a node *is* master only while it holds one of
``masters_required`` leader keys, ``<prefix>/leaders/<slot>`` = its instance id, created
in a transaction (only if absent) under its own lease.  The key's revision is the fencing
token: it only grows from one mastership to the next.

Safety comes from the lease, seen from the node's side: after each keep-alive sent at
``t`` and answered, the lease lives at least until ``t + ttl`` (etcd counts from when it
received it, later).  The node holds mastership only until ``t + ttl - margin``
(:meth:`EtcdCoordinator.good_until`); the runtime demotes it then unless a newer
keep-alive came back.  So a node cut from etcd, or paused, stops believing before its key
can pass to another node.  Keep-alives go every quarter TTL, so one slow answer costs
nothing.  ``margin`` (a quarter of the TTL, at least 0.5 s) covers the time for the
demotion to take effect and clock-rate differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, Protocol

from ..config import Options
from ..errors import TransportUnavailable
from . import client as etcd_client
from .registry import lease_ttl
from .url import EtcdConfig, parse_etcd_url

log = logging.getLogger("pydiscover.etcd.coordinator")

#: Seconds between two tries for a leader key while all are held by others.
ACQUIRE_RETRY = 0.25


class CoordinatorListener(Protocol):
    """What the coordinator tells its node, on the node's loop."""

    def lease_good_until(self, deadline: float) -> None:
        """The lease is safe to act on until ``deadline`` (``time.monotonic()`` seconds)."""

    def lease_lost(self) -> None:
        """The lease is gone (expired or replaced): nothing held under it counts any more."""

    def mastership_granted(self, token: int, seq: int) -> None:
        """A leader key is held for request ``seq``; ``token`` is its revision."""


class EtcdCoordinator:
    """One node's lease and leader key in etcd (see the module's documentation)."""

    def __init__(
        self,
        url: str,
        *,
        node_timeout: float | None = None,
        call_timeout: float = 2.0,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        self.config: EtcdConfig = parse_etcd_url(url)
        etcd_client.import_aetcd()
        self.display_url = self.config.display
        self._node_timeout = node_timeout
        self.ttl = lease_ttl(node_timeout if node_timeout is not None else Options.node_timeout)
        self.call_timeout = call_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.masters_required = 1
        self._iid = ""
        self._listener: CoordinatorListener | None = None
        self._caller: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._endpoint_index = 0
        self._lease: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._acquiring: asyncio.Task[None] | None = None
        #: The leader key held and its revision (the token), or ``None``.
        self._held: tuple[bytes, int] | None = None
        self._wanted = False
        self._want_seq = 0
        self._connected = False
        self._opened = False
        #: Set first thing in a close: nothing more is written or renewed, even by a task whose
        #: cancellation a library call swallowed.
        self._closing = False
        self._serialized = etcd_client.Serialized()  # opens and closes
        #: Counts: ``lease_lost``, ``unreachable``, ``granted``, ``released``.
        self.counters: dict[str, int] = {}

    @property
    def margin(self) -> float:
        """Seconds before the lease could end at which the node stops acting on it."""
        return max(0.5, self.ttl / 4)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def leader_key(self) -> str | None:
        """The leader key held now, or ``None``."""
        return self._held[0].decode() if self._held is not None else None

    def adopt_timing(self, node_timeout: float, masters_required: int) -> None:
        """The node's settings, given when the node is built."""
        if self._node_timeout is None:
            self.ttl = lease_ttl(node_timeout)
        self.masters_required = masters_required

    # ------------------------------------------------------------ the node's side
    async def open(self, iid: str, listener: CoordinatorListener) -> None:
        """Connect and take a lease; ``TransportUnavailable`` naming the URL if etcd cannot be reached."""
        if self._opened:
            raise RuntimeError("this coordinator is open already (one node per coordinator object)")
        self._opened = True
        self._caller = asyncio.get_running_loop()
        self._listener = listener
        self._iid = iid
        try:
            await etcd_client.run(self._serialized(self._open()))
        except BaseException:
            self._opened = False
            self._caller = self._listener = None
            etcd_client.spawn(self._serialized(self._close()))
            raise

    def want(self, wanted: bool, seq: int) -> None:
        """Request ``seq``: a leader key (until one is held) or none; returns at once.

        Requests are carried out in order, each as a whole (a transaction in flight is
        never abandoned); a grant names the request it answers.
        """
        if self._opened:
            etcd_client.spawn(self._want(wanted, seq))

    async def close(self) -> None:
        """Revoke the lease (the leader key goes with it); bounded, never raises."""
        if not self._opened:
            return
        self._opened = False
        self._listener = None
        try:  # the lease ends by itself within its TTL anyway
            await etcd_client.run_bounded(self._serialized(self._close()), 3 * self.call_timeout + 1,
                                          f"closing the coordinator {self.display_url}")
        finally:
            self._caller = None

    async def acquire_owner(self, resource_id: str) -> int | None:
        """Create ``<prefix>/owners/<resource_id>`` under this node's lease, only if absent; its
        revision (the fencing token), or ``None`` while another node holds it.  A key that
        holds our id under our lease already is ours (a try whose answer was lost)."""
        return await etcd_client.run(self._take_key(self._owner_key(resource_id)))

    async def release_owner(self, resource_id: str, token: int | None) -> None:
        """Delete the owner key we created (revision ``token``; ``None``: whichever holds our id, for an
        acquire whose answer never came); never another node's.  Tried again through an etcd
        hiccup until it is done or our lease is gone (the key goes with it then)."""
        await etcd_client.run(self._release_for_sure(self._owner_key(resource_id), token))

    async def _release_for_sure(self, key: bytes, token: int | None) -> None:
        lease = self._lease
        for _ in range(1000):  # bounded: the lease ends within its TTL anyway
            if await self._delete_key(key, token) or self._lease != lease or self._lease is None:
                return
            await asyncio.sleep(ACQUIRE_RETRY)

    def _owner_key(self, resource_id: str) -> bytes:
        return f"{self.config.prefix}/owners/{resource_id}".encode()

    def _tell(self, method: str, *args: Any) -> None:
        if self._listener is not None:
            etcd_client.call_on(self._caller, self._deliver, method, args)

    def _deliver(self, method: str, args: tuple[Any, ...]) -> None:
        listener = self._listener
        if listener is not None:
            getattr(listener, method)(*args)

    # ------------------------------------------------------------ on the etcd loop
    async def _open(self) -> None:
        self._closing = False
        try:
            self._client = await self._connect()
            await self._new_lease(self._client)
        except Exception as exc:
            raise TransportUnavailable(
                f"coordinator {self.display_url}: etcd unreachable ({etcd_client.describe(exc)})") from exc
        self._connected = True
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="pydiscover-etcd-coordinator")

    async def _close(self) -> None:
        # Told to stop first, revoked at once, the tasks' own clean-up waited for last: a slow
        # one cannot delay the revoke, and nothing is written after it.
        self._closing = True
        tasks = [task for task in (self._acquiring, self._task) if task is not None]
        for task in tasks:
            task.cancel()
        self._acquiring = self._task = None
        lease, self._lease = self._lease, None
        self._held = None
        self._wanted = False
        if self._client is not None and lease is not None:
            try:
                await asyncio.wait_for(self._client.revoke_lease(lease), self.call_timeout)
            except Exception as exc:  # the lease then ends by itself within its TTL
                log.warning("could not revoke the coordinator lease: %s", etcd_client.describe(exc))
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        client, self._client = self._client, None
        self._connected = False
        if client is not None:
            await etcd_client.close(client, self.call_timeout)

    async def _connect(self) -> Any:
        client, self._endpoint_index = await etcd_client.connect_first(
            self.config, self._endpoint_index, self.call_timeout, f"{self.config.prefix}/leaders/".encode())
        return client

    async def _new_lease(self, client: Any) -> None:
        if self._closing:
            raise ConnectionError("the coordinator is closing")
        sent = time.monotonic()
        lease = await client.lease(self.ttl)
        self._lease = int(lease.id)
        self.ttl = int(lease.ttl or self.ttl)  # what etcd granted (it may raise a TTL to its minimum)
        self._tell("lease_good_until", sent + self.ttl - self.margin)

    async def _supervise(self) -> None:
        """Keep the lease alive every quarter TTL; reconnect with backoff on failure."""
        backoff = self.min_backoff
        while not self._closing:
            try:
                client = self._client
                if client is None:
                    client = await self._connect()
                    self._client = client
                    self._connected = True
                    await self._refresh(client)  # the lease may have outlived the outage (etcd restart)
                    backoff = self.min_backoff
                await asyncio.sleep(self.ttl / 4)
                await self._refresh(client)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # an outage: the node demotes at its deadline by itself
                if self._closing:
                    return
                if self._connected:
                    log.warning("coordinator etcd %s lost: %s", self.display_url, etcd_client.describe(exc))
                self._connected = False
                self.counters["unreachable"] = self.counters.get("unreachable", 0) + 1
                client, self._client = self._client, None
                if client is not None:
                    await etcd_client.close(client, self.call_timeout)
                await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, self.max_backoff)

    async def _refresh(self, client: Any) -> None:
        if self._closing or self._lease is None:
            return
        sent = time.monotonic()
        response = await asyncio.wait_for(client.refresh_lease(self._lease), self.call_timeout)
        if response.TTL > 0:
            self._tell("lease_good_until", sent + self.ttl - self.margin)
            return
        # Expired (a long outage, a long pause): whatever was held under it is gone.  The
        # node stops wanting a key when told; it asks again, with a new request, once the
        # new lease is good.
        log.warning("the coordinator lease expired: taking a new one")
        self.counters["lease_lost"] = self.counters.get("lease_lost", 0) + 1
        self._held = None
        self._wanted = False
        self._tell("lease_lost")
        await self._new_lease(client)

    async def _want(self, wanted: bool, seq: int) -> None:
        if seq <= self._want_seq:
            return  # an older request arriving late
        self._want_seq = seq
        self._wanted = wanted
        if not wanted:
            await self._release()
        elif self._held is not None:
            self._tell("mastership_granted", self._held[1], seq)  # still held: it answers this request too
        elif self._acquiring is None or self._acquiring.done():
            self._acquiring = asyncio.get_running_loop().create_task(self._acquire())

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            await self._delete_key(*held)

    async def _delete_key(self, key: bytes, token: int | None) -> bool:
        """Delete ``key`` if it is still one we created (revision ``token``, or holding our id);
        ``True`` once that is settled (deleted, or not ours), ``False`` if etcd did not answer."""
        client = self._client
        if client is None:
            return False
        tx = client.transactions
        # Only a key we created: never one another node holds now.
        compare = [tx.mod(key) == token] if token is not None else [tx.value(key) == self._iid.encode()]
        try:
            succeeded, _ = await client.transaction(compare=compare, success=[tx.delete(key)], failure=[])
        except Exception as exc:
            log.debug("releasing %s: %s", key, etcd_client.describe(exc))
            return False
        if succeeded:
            self.counters["released"] = self.counters.get("released", 0) + 1
        return True

    async def _take_key(self, key: bytes) -> int | None:
        """Create ``key`` = our id under our lease, only if absent; its revision, or ``None`` if another
        node holds it (or etcd cannot be reached: the caller tries again later)."""
        client, lease = self._client, self._lease
        if client is None or lease is None or self._closing:
            return None
        tx = client.transactions
        try:
            succeeded, responses = await client.transaction(
                compare=[tx.version(key) == 0],
                success=[tx.put(key, self._iid.encode(), lease=lease), tx.get(key)], failure=[tx.get(key)])
        except Exception as exc:
            log.debug("key %s: %s", key, etcd_client.describe(exc))
            return None
        found = responses[-1]
        kv = found[0][1] if found else None  # (value, Get): Get is the key-value
        if kv is None:
            return None
        if not succeeded:
            if kv.value != self._iid.encode() or int(kv.lease) != lease:
                return None  # another node's
            # Ours already (a try whose answer was lost, a release that did not get through):
            # written again, so the token is new and higher, never one handed out before.
            try:
                succeeded, responses = await client.transaction(
                    compare=[tx.mod(key) == int(kv.mod_revision)],
                    success=[tx.put(key, self._iid.encode(), lease=lease), tx.get(key)], failure=[])
            except Exception as exc:
                log.debug("key %s: %s", key, etcd_client.describe(exc))
                return None
            if not succeeded:
                return None
            kv = responses[-1][0][1]
        if self._lease != lease:
            return None  # taken under a lease that is gone: it does not count (and went with it)
        return int(kv.mod_revision)

    async def _acquire(self) -> None:
        """Try for a free leader key while one is wanted; each try is one whole transaction.

        A key that already holds our id under our lease (a try whose answer was lost) is ours.
        """
        while self._wanted and self._held is None and not self._closing:
            for slot in range(self.masters_required):
                key = f"{self.config.prefix}/leaders/{slot}".encode()
                token = await self._take_key(key)
                if token is None:
                    continue
                self._held = (key, token)
                if not self._wanted:  # the node changed its mind while this was in flight
                    await self._release()
                    break  # and may have changed it back during the release: this task is still the one
                self.counters["granted"] = self.counters.get("granted", 0) + 1
                log.info("holding %s (fencing token %d)", key.decode(), token)
                self._tell("mastership_granted", token, self._want_seq)
                return
            else:
                await asyncio.sleep(ACQUIRE_RETRY)


__all__ = ["ACQUIRE_RETRY", "CoordinatorListener", "EtcdCoordinator"]
