"""Wire codec: node-discover's envelope, size budget, and a decoder that never raises."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydiscover import PacketTooLarge
from pydiscover.core import DiscoveryCore, Emit
from pydiscover.options import build_options
from pydiscover.wire import (
    GOODBYE,
    HELLO,
    HELLO_START,
    DecodeError,
    Envelope,
    Hello,
    decode,
    decode_hello,
    encode,
    hello_key,
)


def test_hello_round_trip_matches_node_discover_field_names() -> None:
    data = Hello(True, True, 2.5, {"role": "db"}).to_json()
    raw = encode(Envelope(HELLO, "p", "i", "host", data, 3))
    obj = orjson.loads(raw)
    assert set(obj) == {"event", "pid", "iid", "hostName", "data", "seq"}
    assert set(obj["data"]) == {"isMaster", "isMasterEligible", "weight", "address", "advertisement"}
    env = decode(raw)
    assert (env.event, env.pid, env.iid, env.hostname, env.seq) == (HELLO, "p", "i", "host", 3)
    assert decode_hello(env.data) == Hello(True, True, 2.5, {"role": "db"}, "127.0.0.1")


def test_budget_error_names_size_and_budget() -> None:
    with pytest.raises(PacketTooLarge, match=r"message encodes to \d+ bytes, over the 100-byte"):
        encode(Envelope("chat", "p", "i", "h", "x" * 200), what="message", budget=100)


def test_unserializable_data_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON-serializable"):
        encode(Envelope("chat", "p", "i", "h", {1j}))


def test_goodbye_name_is_not_a_node_discover_event() -> None:
    # node-discover only listens to "hello" and joined channels; a dotted name cannot collide
    assert GOODBYE not in {"hello", "promotion", "demotion", "added", "removed", "master"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
events = st.sampled_from(["hello", GOODBYE, "chat", "error", "promotion", "added", "x"]) | st.text(max_size=10)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "event": events | json_values, "pid": st.text(max_size=5) | json_values,
        "iid": st.sampled_from(["me", "peer"]) | json_values, "hostName": st.text(max_size=5) | json_values,
        "seq": st.integers(-3, 2**60) | json_values,
        "data": json_values | st.fixed_dictionaries({}, optional={
            "isMaster": json_values, "isMasterEligible": json_values, "weight": json_values,
            "address": json_values, "advertisement": json_values,
        }),
    },
)


def _fuzz_core() -> DiscoveryCore:
    core = DiscoveryCore(build_options(hostname="me", ignore_process=False), pid="mine", iid="me")
    core.start(0.0)
    core.join("chat")
    return core


@settings(max_examples=400, deadline=None)
@given(raw=st.binary(max_size=300))
def test_fuzz_random_bytes_never_raise(raw: bytes) -> None:
    core = _fuzz_core()
    out = core.datagram_received(0.1, raw, ("10.0.0.1", 1))
    assert all(isinstance(a, Emit) and a.event in {"chat", "added", "master", "helloReceived"} for a in out)


@settings(max_examples=600, deadline=None)
@given(obj=envelopes, now=st.floats(0, 100))
def test_fuzz_structured_packets_never_raise_or_fire_local_events(obj: dict[str, object], now: float) -> None:
    core = _fuzz_core()
    out = core.datagram_received(now, orjson.dumps(obj), ("10.0.0.1", 1))
    out += core.tick(now + 1000)  # and whatever it stored survives expiry and election
    allowed = {"chat", "added", "master", "helloReceived", "removed", "helloEmitted", "check", "promotion"}
    assert {a.event for a in out if isinstance(a, Emit)} <= allowed
    if obj.get("event") not in ("hello", "chat"):
        assert not [a for a in out if isinstance(a, Emit) and a.event in ("added", "chat", "master")]


@given(raw=st.binary(max_size=200))
def test_decode_raises_only_decode_error(raw: bytes) -> None:
    try:
        decode(raw)
    except DecodeError as exc:
        assert exc.reason in {"not_json", "not_object", "bad_envelope", "oversized"}


# ------------------------------------------------ hello_key: a hello equal but for its seq
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12) | st.sampled_from([',"seq":5}', '"seq":', "}", ',"seq":0}']),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.text(max_size=6) | st.sampled_from(["seq", "event", "iid"]), children, max_size=3),
    max_leaves=10,
)


@settings(max_examples=400, deadline=None)
@given(data=JSON_VALUES, seq=st.none() | st.integers(0, 2**53), hostname=st.text(max_size=10))
def test_hello_key_finds_exactly_the_top_level_seq_that_encode_writes(data: object, seq: int | None,
                                                                       hostname: str) -> None:
    raw = encode(Envelope(HELLO, "p", "i", hostname, data, seq))
    key = hello_key(raw)
    if seq is None:
        assert key is None  # whatever the data says, however it ends
        return
    assert key is not None and raw.startswith(HELLO_START)  # the core only reads keys of what starts so
    iid, body, found = key
    assert iid == "i" and found == seq
    assert raw == body + b',"seq":' + str(seq).encode() + b"}"
    without = orjson.loads(raw)
    del without["seq"]
    assert orjson.loads(body + b"}") == without  # the body says everything but the seq


@settings(max_examples=400, deadline=None)
@given(tail=st.binary(max_size=30) | st.sampled_from(
    [b',"seq":}', b',"seq":-1}', b',"seq":01}', b',"seq":1.5}', b',"seq":1e3}', b',"seq": 1}', b',"seq":1}}',
     b',"seq":1,"seq":2}', b'\xff,"seq":5}',
     b',"seq":\xd9\xa1}', b',"seq":99999999999999999999}']))
def test_hello_key_takes_only_a_json_integer_as_the_last_member(tail: bytes) -> None:
    raw = b'{"event":"hello","pid":"p","iid":"i"' + tail
    key = hello_key(raw)
    if key is not None:
        iid, body, seq = key
        assert iid == "i"
        assert raw == body + b',"seq":' + str(seq).encode() + b"}" and len(str(seq)) <= 16
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return  # not a packet: the core never trusts a body it has not seen parsed
        assert parsed["seq"] == seq  # JSON's last duplicate key wins, as here


@settings(max_examples=400, deadline=None)
@given(pid=st.text(max_size=12) | st.sampled_from(['","iid":"x', '\\', '"']), iid=st.text(min_size=1, max_size=12),
       data=JSON_VALUES, seq=st.none() | st.integers(0, 2**53))
def test_hello_key_reads_the_iid_and_body_that_encode_wrote(pid: str, iid: str, data: object, seq: int | None) -> None:
    """Whatever the pid holds, the key is the real iid (when JSON writes it unescaped) and
    the body all but the seq; an iid that needed escapes may give no key, never another
    peer's text."""
    raw = encode(Envelope(HELLO, pid or "p", iid, "h", data, seq))
    key = hello_key(raw)
    if seq is None:
        assert key is None
        return
    body = raw[:raw.rindex(b',"seq":')]
    if orjson.dumps(iid)[1:-1] == iid.encode():
        assert key == (iid, body, seq)
    else:
        assert key is None or key[1:] == (body, seq)
