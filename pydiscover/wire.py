"""Datagram format: node-discover 1.2.1's JSON envelope, plus our compatible extensions.

One datagram carries one JSON object::

    {"event": "hello", "pid": "<process uuid>", "iid": "<instance uuid>",
     "hostName": "host", "data": {...}, "seq": 17}

``event`` is ``"hello"``, :data:`GOODBYE`, or a channel name.  A hello's ``data`` is
``{"isMaster", "isMasterEligible", "weight", "address", "advertisement"}``.  ``seq``
(a per-instance counter) is ours; node-discover reads only the keys it knows, so it is
invisible to it.  This module only converts bytes <-> values: no sockets, no clocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import orjson

from .errors import DiscoveryError, PacketTooLarge

HELLO = "hello"
#: Sent by :meth:`Discovery.stop`.  A node-discover peer has no listener for it and ignores it.
GOODBYE = "pydiscover.goodbye"
#: IPv4 over Ethernet: 1500 MTU - 20 IP header - 8 UDP header.
DEFAULT_MAX_DATAGRAM = 1472
#: IPv6 over Ethernet: 1500 MTU - 40 IP header - 8 UDP header.
DEFAULT_MAX_DATAGRAM_V6 = 1452
#: The largest sequence number we write (JSON's safe integers): size checks encode with it,
#: so a packet that fits now still fits when sent later with a longer number.
MAX_SEQ = 2**53

#: Largest payload a UDP/IPv4 datagram can carry; anything bigger cannot be a valid packet.
MAX_RECEIVE = 65507


class DecodeError(DiscoveryError, ValueError):
    """A datagram that is not a packet; ``reason`` is the drop counter it belongs to."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}")


class Envelope(NamedTuple):
    """The decoded outer object of any packet (a tuple: built for every datagram received)."""

    event: str
    pid: str
    iid: str
    hostname: str
    data: Any
    #: Our per-instance sequence number; ``None`` from node-discover peers.
    seq: int | None = None


@dataclass(frozen=True, slots=True)
class Hello:
    """The ``data`` of a hello packet."""

    is_master: bool
    is_master_eligible: bool
    weight: float
    advertisement: Any = None
    address: str = "127.0.0.1"
    #: A master's fencing token (with a coordinator): the revision of its leader key in etcd.
    #: Our extension, as ``seq``; node-discover ignores it.
    token: int | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "isMaster": self.is_master,
            "isMasterEligible": self.is_master_eligible,
            "weight": self.weight,
            # node-discover always sends 127.0.0.1 here; receivers use the source address.
            "address": self.address,
        }
        if self.advertisement is not None:
            # JSON.stringify drops an undefined advertisement; so do we for None.
            out["advertisement"] = self.advertisement
        if self.token is not None:
            out["token"] = self.token
        return out


def _dumps(value: Any, what: str) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError as exc:  # orjson.JSONEncodeError subclasses TypeError
        raise TypeError(f"{what} is not JSON-serializable: {exc}") from None


def encode(envelope: Envelope, *, what: str = "packet", budget: int | None = None) -> bytes:
    """Serialize ``envelope``; raise :class:`PacketTooLarge` when over ``budget`` bytes."""
    obj: dict[str, Any] = {
        "event": envelope.event,
        "pid": envelope.pid,
        "iid": envelope.iid,
        "hostName": envelope.hostname,
    }
    if envelope.data is not None:
        obj["data"] = envelope.data
    if envelope.seq is not None:
        obj["seq"] = envelope.seq
    raw = _dumps(obj, what)
    if budget is not None and len(raw) > budget:
        raise PacketTooLarge(what, len(raw), budget)
    return raw


#: How :func:`encode` begins a hello (``event`` first, then ``pid`` and ``iid``): a message
#: never does, so only these are worth :func:`hello_key` on the receive path.
HELLO_START = b'{"event":"hello",'
_SEQ_MARK = b',"seq":'
#: The longest trailing ``,"seq":N}`` that :func:`encode` writes (``MAX_SEQ`` has 16 digits).
_SEQ_TAIL = len(_SEQ_MARK) + len(str(MAX_SEQ)) + 1
_IID_MARK = b'","iid":"'


def hello_key(plaintext: bytes) -> tuple[str, bytes, int] | None:
    """``(iid, body, seq)`` of a hello as :func:`encode` writes it, without parsing; else ``None``.

    ``body`` is the packet but its trailing ``,"seq":N}``: two hellos with equal bodies say
    the same thing but for the seq, so a receiver that finds the sender's record by the iid
    and the body equal to the one that made it need not parse the hello.  Safe without
    parsing: such a tail can only close the top-level object (inside a string the quotes
    would be escaped; a nested object would need a second ``}``), and ``N`` must be an
    integer as JSON writes it (no sign, no leading zero).  The iid is read as the first
    ``","iid":"`` up to the next quote: exact for our peers (ids without escapes); for any
    other text it may be wrong, which can only miss, since a hit also needs the whole body
    equal to one that was parsed.
    """
    body, mark, tail = plaintext.rpartition(_SEQ_MARK)
    digits = tail[:-1]
    start = body.find(_IID_MARK, len(HELLO_START)) + len(_IID_MARK)
    end = body.find(b'"', start)
    # One pass of tests (this runs for every hello): the tail, then an iid found.
    if not mark or tail[-1:] != b"}" or not digits.isdigit() or len(tail) > _SEQ_TAIL - len(_SEQ_MARK) \
            or (digits[0] == 0x30 and len(digits) > 1) or start < len(_IID_MARK) or end < 0:
        return None
    try:
        return body[start:end].decode(), body, int(digits)
    except UnicodeDecodeError:
        return None


def check_json(value: Any, what: str) -> None:
    """Raise ``TypeError`` now if ``value`` could never be sent."""
    _dumps(value, what)


def canonical(value: Any) -> bytes:
    """A decoded JSON value as bytes, to compare values strictly (``true`` is not ``1``).

    Copied to its own size: orjson's result keeps its whole write buffer (about 4 KiB even
    for a short hello), and one of these is kept per peer.
    """
    return bytes(memoryview(orjson.dumps(value)))


def snapshot(value: Any) -> Any:
    """``value`` as peers will see it (a deep, JSON-shaped copy): later mutation cannot leak in."""
    return None if value is None else orjson.loads(_dumps(value, "advertisement"))


def _text(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value:
        raise DecodeError("bad_envelope", f"{key!r} must be a non-empty string")
    return value


_new_tuple = tuple.__new__


def decode(raw: bytes) -> Envelope:
    """Parse one datagram; raise :class:`DecodeError` (never anything else) if it is not a packet."""
    if len(raw) > MAX_RECEIVE:
        raise DecodeError("oversized", f"{len(raw)} bytes")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("not_json", str(exc)) from None
    if type(obj) is not dict:
        raise DecodeError("not_object", type(obj).__name__)
    get = obj.get
    event, pid, iid, hostname, seq = get("event"), get("pid"), get("iid"), get("hostName", ""), get("seq")
    # One test for the common case; the precise complaint only when it fails.
    if (
        type(event) is str
        and type(pid) is str
        and type(iid) is str
        and event
        and pid
        and iid
        and type(hostname) is str
        and (seq is None or (type(seq) is int and seq >= 0))
    ):
        return _new_tuple(Envelope, (event, pid, iid, hostname, get("data"), seq))  # without Envelope's Python __new__
    _explain_bad_envelope(obj)


def _explain_bad_envelope(obj: dict[str, Any]) -> NoReturn:
    for key in ("event", "pid", "iid"):
        _text(obj, key)
    if not isinstance(obj.get("hostName", ""), str):
        raise DecodeError("bad_envelope", "'hostName' must be a string")
    raise DecodeError("bad_envelope", "'seq' must be a non-negative integer")


def decode_hello(data: Any) -> Hello:
    """Validate a hello's ``data``; node-discover's truthy-anything is not accepted."""
    if not isinstance(data, dict):
        raise DecodeError("bad_hello", "hello data must be an object")
    is_master = data.get("isMaster", False)
    eligible = data.get("isMasterEligible", False)
    if not isinstance(is_master, bool) or not isinstance(eligible, bool):
        raise DecodeError("bad_hello", "isMaster/isMasterEligible must be booleans")
    weight = data.get("weight")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise DecodeError("bad_hello", "weight must be a finite number")
    address = data.get("address", "127.0.0.1")
    if not isinstance(address, str):
        raise DecodeError("bad_hello", "address must be a string")
    token = data.get("token")
    if token is not None and (isinstance(token, bool) or not isinstance(token, int) or token < 0):
        raise DecodeError("bad_hello", "token must be a non-negative integer")
    return Hello(is_master, eligible, float(weight), data.get("advertisement"), address, token)
