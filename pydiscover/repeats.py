"""Memory of accepted hellos, so a repeat skips parsing.

node-discover peers send the same bytes every time (no seq, deterministic JSON and
cipher), and opening and parsing are pure functions of the bytes: the core keeps those
datagrams whole.  Ours carry a fresh seq (and, sealed, a fresh nonce): each peer's record
keeps its opened text without the seq instead (``Peer.body``, ``wire.hello_key``).
"""

from __future__ import annotations

from .wire import Envelope

#: Distinct node-discover hellos remembered so a byte-identical repeat is not parsed again.
REPEAT_CACHE_SIZE = 4096
#: ... and their total size in datagram bytes.
REPEAT_CACHE_BYTES = 1 << 20


class RepeatCache:
    """Datagram -> (envelope, plaintext), bounded in entries and in datagram bytes.

    When full it starts over rather than evicting one by one: the steady state (a
    cluster repeating itself) refills it within a hello interval.
    """

    __slots__ = ("_entries", "_max_bytes", "_max_entries", "get", "size")

    def __init__(self, max_entries: int = REPEAT_CACHE_SIZE, max_bytes: int = REPEAT_CACHE_BYTES) -> None:
        self._entries: dict[bytes, tuple[Envelope, bytes]] = {}
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        #: Total datagram bytes held.
        self.size = 0
        #: What ``datagram`` opened to, or ``None`` (the dict's own ``get``: no frame on the hot path).
        self.get = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, datagram: bytes, env: Envelope, plaintext: bytes) -> None:
        """Keep ``datagram``: only ones that made a peer's record (accepted, valid) belong here."""
        entries = self._entries
        if len(entries) >= self._max_entries or self.size + len(datagram) > self._max_bytes:
            self.clear()
        if datagram not in entries:
            self.size += len(datagram)
        entries[datagram] = (env, plaintext)

    def discard(self, key: bytes) -> None:
        """Forget ``key`` if held (a record it made was replaced: it will not come again)."""
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= len(key)

    def clear(self) -> None:
        """Forget everything (on stop, and on a key change: what old keys opened new ones may not)."""
        self._entries.clear()
        self.size = 0
