"""Sealing datagrams: AES-256-GCM with a key ring, node-discover's legacy cipher, replay guard.

A *codec* turns the JSON bytes of a packet into what goes on the wire and back.  It
knows nothing about nodes; the core decides what a replayed or stale packet means.

AEAD datagram layout (27-byte header, authenticated as associated data)::

    magic "\\xa7\\xd1" | version 1 | key id (4) | sender time, ms (8, big-endian) | nonce (12)
    | AES-256-GCM ciphertext + 16-byte tag

The key is derived from the secret with scrypt (fixed salt, so every node derives the
same key with no exchange); the key id is a keyed hash of the derived key, so it says
which key to try without revealing anything about it.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import hmac
import os
import struct
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from .errors import DiscoveryError

MAGIC = b"\xa7\xd1"
VERSION = 1
_HEADER = struct.Struct(">2sB4sQ12s")
HEADER_SIZE = _HEADER.size  # 27
TAG_SIZE = 16
AEAD_OVERHEAD = HEADER_SIZE + TAG_SIZE
_KDF_SALT = b"pydiscover/aead/v1"

Secret = str | bytes


class OpenError(DiscoveryError, ValueError):
    """A datagram that cannot be opened; ``reason`` is its drop counter."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class Opened(NamedTuple):
    """An opened datagram: the packet's JSON and, for AEAD, the sender's clock in seconds."""

    plaintext: bytes
    sent_at: float | None = None


class Codec(abc.ABC):
    """Seals outgoing packets and opens incoming ones."""

    #: ``"plaintext"``, ``"aead"`` or ``"node-discover"``.
    name: str
    #: Whether a packet that opens is proven to come from a key holder (only AEAD).
    authenticates: bool = False

    @abc.abstractmethod
    def seal(self, plaintext: bytes, wall_time: float) -> bytes:
        """The datagram to send for ``plaintext`` (``wall_time``: seconds since the epoch)."""

    @abc.abstractmethod
    def open(self, datagram: bytes) -> Opened:
        """The packet inside ``datagram``; raise :class:`OpenError` (and nothing else) otherwise."""

    @abc.abstractmethod
    def max_sealed_size(self, plaintext_size: int) -> int:
        """The largest datagram ``seal`` can produce for that many bytes (for the size budget)."""


_new_tuple = tuple.__new__


class PlainCodec(Codec):
    """No key: node-discover's plaintext JSON."""

    name = "plaintext"

    def seal(self, plaintext: bytes, wall_time: float) -> bytes:
        return plaintext

    def open(self, datagram: bytes) -> Opened:
        if datagram.startswith(MAGIC):
            raise OpenError("encrypted")  # a keyed cluster shares this port; we hold no key
        return _new_tuple(Opened, (datagram, None))  # Opened(datagram) without its Python-level __new__

    def max_sealed_size(self, plaintext_size: int) -> int:
        return plaintext_size


def _secret_bytes(secret: Secret) -> bytes:
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


@functools.lru_cache(maxsize=64)
def derive_key(secret: bytes) -> tuple[bytes, bytes]:
    """``(aes_key, key_id)`` for a secret: scrypt (n=2**14, r=8, p=1), then a 4-byte id."""
    key = Scrypt(salt=_KDF_SALT, length=32, n=2**14, r=8, p=1).derive(secret)
    key_id = hmac.new(key, b"pydiscover key id", hashlib.sha256).digest()[:4]
    return key, key_id


class AeadCodec(Codec):
    """AES-256-GCM; the first secret seals, every secret opens (rotation)."""

    name = "aead"
    authenticates = True

    def __init__(self, secrets: Sequence[Secret]) -> None:
        if not secrets:
            raise ValueError("key: at least one secret is required")
        derived = [derive_key(_secret_bytes(s)) for s in secrets]
        self._seal_key = AESGCM(derived[0][0])
        self._seal_id = derived[0][1]
        self._ring = {key_id: AESGCM(key) for key, key_id in derived}

    def seal(self, plaintext: bytes, wall_time: float) -> bytes:
        sent_ms = min(max(int(wall_time * 1000), 0), 2**64 - 1)  # a clock before 1970 is a broken clock
        header = _HEADER.pack(MAGIC, VERSION, self._seal_id, sent_ms, os.urandom(12))
        return header + self._seal_key.encrypt(header[-12:], plaintext, header)

    def open(self, datagram: bytes) -> Opened:
        if len(datagram) < AEAD_OVERHEAD or not datagram.startswith(MAGIC):
            raise OpenError(_foreign_reason(datagram))
        _, version, key_id, sent_ms, nonce = _HEADER.unpack_from(datagram)
        if version != VERSION:
            raise OpenError("malformed")
        cipher = self._ring.get(key_id)
        if cipher is None:
            raise OpenError("bad_key")
        try:
            plaintext = cipher.decrypt(nonce, datagram[HEADER_SIZE:], datagram[:HEADER_SIZE])
        except InvalidTag:
            raise OpenError("tampered") from None
        return Opened(plaintext, sent_ms / 1000)

    def max_sealed_size(self, plaintext_size: int) -> int:
        return plaintext_size + AEAD_OVERHEAD


def looks_like_legacy_cipher(datagram: bytes) -> bool:
    """Shaped like node-discover's cipher: whole AES blocks written as latin-1 text in UTF-8.

    Random bytes almost never are (every byte >= 0x80 must be a 0xC2/0xC3 pair), so a
    keyed node can tell a peer speaking node-discover's cipher from noise.
    """
    try:
        text = datagram.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and len(text) % 16 == 0 and max(text) <= "\xff"


def _is_json_object(datagram: bytes) -> bool:
    """Plaintext JSON, not merely a first byte ``{``: a fixed-IV ciphertext starts with ``{`` for 1 key in 256."""
    if datagram[:1] != b"{":
        return False
    try:
        return isinstance(orjson.loads(datagram), dict)
    except orjson.JSONDecodeError:
        return False


def _foreign_reason(datagram: bytes) -> str:
    """Why a datagram is not ours to open: ``plaintext``, ``aead``, ``node_discover_cipher`` or ``malformed``."""
    if _is_json_object(datagram):
        return "plaintext"
    if datagram.startswith(MAGIC):
        return "aead"
    return "node_discover_cipher" if looks_like_legacy_cipher(datagram) else "malformed"


def evp_bytes_to_key(password: bytes, key_len: int = 32, iv_len: int = 16) -> tuple[bytes, bytes]:
    """OpenSSL's EVP_BytesToKey with MD5, one round, no salt (what ``crypto.createCipher`` used)."""
    derived, block = b"", b""
    while len(derived) < key_len + iv_len:
        block = hashlib.md5(block + password).digest()
        derived += block
    return derived[:key_len], derived[key_len : key_len + iv_len]


_PKCS7_PADS = [bytes([n]) * n for n in range(17)]


class LegacyCodec(Codec):
    """node-discover 1.2.1's ``key``: AES-256-CBC, EVP_BytesToKey-MD5 key and *fixed* IV, PKCS#7.

    Unauthenticated and deterministic (equal packets give equal ciphertexts); use it only
    to talk to node-discover.  Its ciphertext travels as a latin-1 string written in
    UTF-8, so each byte >= 0x80 takes two bytes on the wire.
    """

    name = "node-discover"

    def __init__(self, secrets: Sequence[Secret]) -> None:
        if not secrets:
            raise ValueError("key: at least one secret is required")
        self._keys = [evp_bytes_to_key(_secret_bytes(s)) for s in secrets]
        # CBC decryption is block-wise: P[i] = AES_dec(C[i]) XOR C[i-1], with C[-1] = the IV.
        # One long-lived ECB context per key does the AES part of every datagram, so no
        # cipher object is built per packet (that cost more than the rest of a hello).
        self._openers = [(Cipher(algorithms.AES(key), modes.ECB()).decryptor(), iv) for key, iv in self._keys]

    def seal(self, plaintext: bytes, wall_time: float) -> bytes:
        key, iv = self._keys[0]
        padder = padding.PKCS7(128).padder()
        encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        ciphertext = encryptor.update(padder.update(plaintext) + padder.finalize()) + encryptor.finalize()
        return ciphertext.decode("latin-1").encode("utf-8")

    def open(self, datagram: bytes) -> Opened:
        try:
            ciphertext = datagram.decode("utf-8").encode("latin-1")
        except (UnicodeDecodeError, UnicodeEncodeError):
            raise OpenError(_foreign_reason(datagram)) from None
        size = len(ciphertext)
        if not size or size % 16:
            raise OpenError(_foreign_reason(datagram))
        for decryptor, iv in self._openers:
            blocks = decryptor.update(ciphertext)
            chain = iv + ciphertext[:-16]
            padded = (int.from_bytes(blocks, "big") ^ int.from_bytes(chain, "big")).to_bytes(size, "big")
            pad = padded[-1]
            if not 1 <= pad <= 16 or padded[-pad:] != _PKCS7_PADS[pad]:
                continue
            plaintext = padded[:-pad]
            # A wrong key still unpads about once in 256; only a JSON object means "this key".
            if plaintext[:1] == b"{" and plaintext[-1:] == b"}":
                return Opened(plaintext)
        raise OpenError("bad_key")

    def max_sealed_size(self, plaintext_size: int) -> int:
        return (plaintext_size // 16 + 1) * 16 * 2


def make_codec(key: Secret | Sequence[Secret] | None, encryption: str | None) -> Codec:
    """The codec for the ``key`` and ``encryption`` options (validated here)."""
    if key is None:
        if encryption is not None:
            raise ValueError(f"encryption={encryption!r} needs a key")
        return PlainCodec()
    secrets: list[Secret] = [key] if isinstance(key, (str, bytes)) else list(key)
    for secret in secrets:
        if not isinstance(secret, (str, bytes)):
            raise TypeError(f"key must be a string, bytes, or a list of them, got {type(secret).__name__}")
        if not secret:
            raise ValueError("key: an empty secret is no secret")
    if not secrets:
        raise ValueError("key: at least one secret is required")
    if encryption in (None, "aead"):
        return AeadCodec(secrets)
    if encryption == "node-discover":
        return LegacyCodec(secrets)
    raise ValueError(f"encryption must be 'aead' or 'node-discover', got {encryption!r}")


class ReplayGuard:
    """Accept each (instance, seq) at most once, for as long as the instance may matter.

    Per instance: the highest sequence number seen and a 64-bit window below it (as in
    IPsec/DTLS), so a little reordering is tolerated but no packet counts twice.  State
    outlives the node by ``retention`` seconds (so captures replayed after a leave or a
    timeout are refused) and at most ``capacity`` instances are remembered.

    Accepting a packet moves no ordering (it is on every hello's path): the instances are
    kept in the order they were last *placed*, and eviction puts one that was heard since
    at the end instead of forgetting it.  So an instance is forgotten ``retention`` seconds
    after it was last heard or somewhat later, never sooner; and over ``capacity``, the
    first to go are the ones not heard since they were placed.
    """

    WINDOW = 64
    _FULL = (1 << WINDOW) - 1

    def __init__(self, retention: float, capacity: int = 50_000) -> None:
        self.retention = retention
        self.capacity = capacity
        # iid -> [highest seq, bitmap of seen seqs below it, forget-at, forget-at when placed]
        self._state: OrderedDict[str, list[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._state)

    def highest(self, iid: str) -> int | None:
        state = self._state.get(iid)
        return state[0] if state is not None else None

    def accept(self, iid: str, seq: int, now: float) -> bool:
        """Record ``seq`` from ``iid``; ``False`` if it was seen before or is too old to tell."""
        state = self._state.get(iid)
        if state is None:
            # First contact: whatever it sent before is history we cannot vouch for, so
            # only newer packets count (a capture from before we started proves nothing).
            forget_at = now + self.retention
            self._state[iid] = [seq, self._FULL, forget_at, forget_at]
            self._evict(now)
            return True
        high, seen = state[0], state[1]
        if seq == high + 1:  # the usual case, in order: one shift
            state[0], state[1], state[2] = seq, ((seen << 1) | 1) & self._FULL, now + self.retention
            return True
        if seq > high:
            shift = seq - high
            seen = ((seen << shift) | (1 << (shift - 1))) & ((1 << self.WINDOW) - 1) if shift <= self.WINDOW else 0
            state[0], state[1] = seq, seen
        else:
            offset = high - seq
            if offset == 0 or offset > self.WINDOW or seen & (1 << (offset - 1)):
                return False
            state[1] = seen | (1 << (offset - 1))
        state[2] = now + self.retention
        return True

    def close(self, iid: str, seq: int | None, now: float) -> None:
        """Nothing from ``iid`` at or below ``seq`` (default: its highest) is accepted again.

        Used on goodbye and on timeout.  Never lowers what was already seen.
        """
        state = self._state.get(iid)
        forget_at = now + self.retention
        if state is None:
            if seq is None:
                return
            self._state[iid] = [seq, self._FULL, forget_at, forget_at]
        else:
            high = state[0]
            if seq is None or seq >= high:
                state[0], state[1] = max(high, seq or high), self._FULL
            elif high - seq <= self.WINDOW:
                # mark every offset from high - seq up to the window as seen
                state[1] = state[1] | (self._FULL ^ ((1 << (high - seq - 1)) - 1))
            state[2] = state[3] = forget_at
            self._state.move_to_end(iid)

    def postpone(self, seconds: float) -> None:
        """Keep every instance ``seconds`` longer (the time a link outage kept them silent)."""
        for state in self._state.values():
            state[2] += seconds
            state[3] += seconds

    def forget_expired(self, now: float) -> None:
        """Drop instances unheard for ``retention`` seconds."""
        self._evict(now)

    def _evict(self, now: float) -> None:
        """Forget from the front: past their time, or over capacity.  One heard since it was
        placed goes to the end instead (once per call), which is what keeps ``accept`` free
        of any reordering."""
        entries = self._state
        while entries:
            iid, state = next(iter(entries.items()))
            if state[2] != state[3]:
                state[3] = state[2]
                entries.move_to_end(iid)
            elif state[2] > now and len(entries) <= self.capacity:
                break
            else:
                del entries[iid]

    def clear(self) -> None:
        self._state.clear()
