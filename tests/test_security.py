"""Sealing: AES-256-GCM with rotation, replay protection, and node-discover's legacy cipher."""

from __future__ import annotations

import hashlib
import random
import socket

import orjson
import pytest
from conftest import LOOPBACK_BROADCAST, eventually
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pydiscover import Discovery, PacketTooLarge
from pydiscover.core import DiscoveryCore, Emit, Transmit
from pydiscover.options import build_options
from pydiscover.security import AEAD_OVERHEAD, AeadCodec, LegacyCodec, OpenError, derive_key, make_codec
from testbed.sim import Sim

T = {"hello_interval": 1.0, "check_interval": 2.0, "node_timeout": 2.0}


def removed_anywhere(sim: Sim) -> list[str]:
    return [n.core.iid for n in sim.nodes for _, ev, _ in n.events if ev == "removed"]


# ------------------------------------------------------------------- AEAD
def test_aead_round_trip_and_no_plaintext_on_the_wire() -> None:
    codec = AeadCodec(["k1"])
    packet = b'{"event":"hello","pid":"p","iid":"i","hostName":"h","data":{"isMaster":false}}'
    sealed = codec.seal(packet, 1_700_000_000.0)
    assert len(sealed) == len(packet) + AEAD_OVERHEAD
    opened = codec.open(sealed)
    assert opened.plaintext == packet and opened.sent_at == 1_700_000_000.0
    assert codec.seal(packet, 1.0) != codec.seal(packet, 1.0)  # random nonce
    for fragment in (b"hello", b"event", b"isMaster", b'"pid"'):
        assert fragment not in sealed[27:]


def test_key_is_derived_not_used_raw() -> None:
    key, key_id = derive_key(b"passphrase")
    assert len(key) == 32 and len(key_id) == 4
    assert key not in (b"passphrase".ljust(32, b"\0"), hashlib.sha256(b"passphrase").digest())
    assert derive_key(b"passphrase") == (key, key_id)  # every node derives the same key
    assert derive_key(b"passphrase2")[1] != key_id


def test_wrong_key_and_plaintext_are_refused_by_reason() -> None:
    sealed = AeadCodec(["k1"]).seal(b"{}", 0)
    with pytest.raises(OpenError, match="bad_key"):
        AeadCodec(["k2"]).open(sealed)
    with pytest.raises(OpenError, match="plaintext"):
        AeadCodec(["k2"]).open(b'{"event":"hello","pid":"a","iid":"b","data":{}}')
    with pytest.raises(OpenError, match="malformed"):
        AeadCodec(["k2"]).open(b"\x00" * 60)
    assert AeadCodec(["k2", "k1"]).open(sealed).plaintext == b"{}"  # any key in the ring opens


def test_every_single_bit_flip_is_rejected() -> None:
    codec = AeadCodec(["k1", "k2"])
    sealed = codec.seal(b'{"event":"hello","pid":"p","iid":"i","hostName":"h","data":{"weight":1}}', 5.0)
    reasons = set()
    for bit in range(len(sealed) * 8):
        flipped = bytearray(sealed)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(OpenError) as info:
            codec.open(bytes(flipped))
        reasons.add(info.value.reason)
    assert reasons <= {"tampered", "bad_key", "malformed"} and "tampered" in reasons


def test_sealing_counts_against_the_budget() -> None:
    core = DiscoveryCore(build_options(key="k", hostname="h", max_datagram=300), pid="p", iid="i")
    core.start(0.0)
    limit = 300 - AEAD_OVERHEAD
    with pytest.raises(PacketTooLarge, match="over the 300-byte"):
        core.send(0.0, "chat", "x" * limit)


# -------------------------------------------------------- clusters, keys
def test_rings_in_either_order_see_each_other_and_a_stranger_stays_invisible() -> None:
    sim = Sim()
    a = sim.add(weight=1, key=["k1", "k2"], **T)
    b = sim.add(weight=2, key=["k2", "k1"], **T)
    c = sim.add(weight=3, key="k3", **T)
    sim.run_until(5)
    assert set(sim.nodes[a].core.nodes) == {"n0001"} and set(sim.nodes[b].core.nodes) == {"n0000"}
    assert sim.nodes[c].core.nodes == {}
    assert sim.nodes[a].core.dropped["bad_key"] > 0 and sim.nodes[c].core.dropped["bad_key"] > 0
    assert sim.masters() == [b, c]  # the stranger is alone in its own cluster


def test_plaintext_and_keyed_nodes_do_not_mix() -> None:
    sim = Sim()
    plain = sim.add(**T)
    keyed = sim.add(key="k", **T)
    sim.run_until(3)
    assert sim.nodes[plain].core.nodes == {} and sim.nodes[keyed].core.nodes == {}
    assert sim.nodes[plain].core.dropped["encrypted"] > 0 and sim.nodes[keyed].core.dropped["plaintext"] > 0


def test_rolling_key_rotation_removes_nobody() -> None:
    sim = Sim()
    for w in (1, 2, 3):
        sim.add(weight=w, key=["A", "B"], **T)
    sim.run_until(4)
    for ring in (["B", "A"], ["B"]):
        for node in sim.nodes:  # one node at a time, as an operator would
            node.core.set_codec(make_codec(ring, None))
            sim.run_until(sim.now + 1.5)
    sim.run_until(sim.now + 5)
    assert removed_anywhere(sim) == []
    assert all(len(n.core.nodes) == 2 for n in sim.nodes) and sim.masters() == [2]
    outsider = sim.add(key="A", **T)  # the old key no longer opens anything
    sim.run_until(sim.now + 3)
    assert sim.nodes[outsider].core.nodes == {}


# ------------------------------------------------------------------ replay
def _captures_of(sim: Sim, idx: int) -> list[bytes]:
    return [datagram for _, src, datagram in sim.captured if src == idx]


def test_replays_after_a_graceful_leave_do_not_resurrect() -> None:
    sim = Sim()
    for w in (1, 2, 3):
        sim.add(weight=w, key="k", **T)
    sim.run_until(5)
    captured = _captures_of(sim, 2)
    sim.stop(2)
    sim.run_until(sim.now + 0.01)
    for _ in range(30):  # 3 s of replays, 10 a second
        for datagram in captured:
            sim.inject(datagram)
        sim.run_until(sim.now + 0.1)
    assert all("n0002" not in n.core.nodes for n in sim.nodes[:2])
    assert not [e for e in sim.events(0, "added") if e[1][0].id == "n0002" and e[0] > 5]
    assert sim.masters() == [1]
    assert sim.nodes[0].core.dropped["replayed"] >= 30 * len(captured) - 5


def test_replays_after_a_crash_do_not_resurrect_or_keep_the_master_alive() -> None:
    sim = Sim()
    for w in (1, 2, 3):
        sim.add(weight=w, key="k", master_timeout=3.0, **T)
    sim.run_until(5)
    assert sim.masters() == [2]
    captured = _captures_of(sim, 2)
    crash = sim.now
    sim.kill(2)
    for _ in range(60):  # replay the dead master's hellos all along
        sim.inject(random.Random(len(captured)).choice(captured))
        sim.run_until(sim.now + 0.1)
    assert sim.masters() == [1]
    (when, _), = sim.events(1, "promotion")
    assert when <= crash + 3.0 + 0.01  # at its deadline: the replays kept nothing alive
    assert all("n0002" not in n.core.nodes for n in sim.nodes[:2])


def test_a_fresh_node_refuses_captures_older_than_the_replay_window() -> None:
    sim = Sim()
    sim.add(weight=5, key="k", replay_window=10.0, **T)
    sim.run_until(3)
    old = _captures_of(sim, 0)
    sim.kill(0)
    sim.run_until(30)
    fresh = sim.add(key="k", replay_window=10.0, **T)  # never saw node 0
    sim.run_until(31)
    for datagram in old:
        sim.inject(datagram)
    assert sim.nodes[fresh].core.nodes == {}
    assert sim.nodes[fresh].core.dropped["outside_window"] == len(old)


def test_replayed_channel_messages_are_delivered_once() -> None:
    sim = Sim()
    a = sim.add(key="k", **T)
    b = sim.add(key="k", **T)
    sim.nodes[b].core.join("chat")
    sim.run_until(1)
    sim.call(a, sim.nodes[a].core.send, "chat", {"pay": 100})
    sim.run_until(1.1)
    (message,) = [d for t, src, d in sim.captured if src == a and t >= 1]
    sim.inject(message)
    sim.inject(message)
    assert len(sim.events(b, "chat")) == 1


# ------------------------------------------------------------------ legacy
# Computed with Node.js 20's crypto.createCipher('aes256', key) (what node-discover calls),
# and for the first cross-checked with `openssl enc -aes-256-cbc -md md5 -nosalt -pass pass:secret`
# (raw ciphertext 2e82af4a55d63e405ac38ee943ee4e8434cad636bd8f482787195d0e38827cdb).
LEGACY_VECTORS = [
    ("secret", '{"event":"hello"}',
     "2ec282c2af4a55c3963e405ac383c28ec3a943c3ae4ec28434c38ac39636c2bdc28f4827c287195d0e38c2827cc39b"),
    ("clé-日本", '{"event":"hello","data":{"x":"é"}}',
     "3b3dc2b352c2a5c2a8c3857c2cc3a9c282c3b033c390c287412006c386c3bc40c2bdc3ba371ec3a4174647c3b12b35c3"
     "bac291c2aa60c2b332c2902206c29fc29671c3bb06c3a4c295"),
]


@pytest.mark.parametrize(("key", "message", "wire_hex"), LEGACY_VECTORS)
def test_legacy_cipher_matches_node_discover_bytes(key: str, message: str, wire_hex: str) -> None:
    codec = LegacyCodec([key])
    assert codec.seal(message.encode(), 0).hex() == wire_hex
    assert codec.open(bytes.fromhex(wire_hex)).plaintext == message.encode()
    assert independent_legacy_open(bytes.fromhex(wire_hex), key) == message.encode()


def independent_legacy_seal(plaintext: bytes, key: str) -> bytes:
    """node-discover's cipher written from its description, sharing no code with pydiscover."""
    material, block = b"", b""
    while len(material) < 48:
        block = hashlib.md5(block + key.encode("utf-8")).digest()
        material += block
    pad = 16 - len(plaintext) % 16
    enc = Cipher(algorithms.AES(material[:32]), modes.CBC(material[32:48])).encryptor()
    raw = enc.update(plaintext + bytes([pad]) * pad) + enc.finalize()
    return "".join(chr(b) for b in raw).encode("utf-8")


def independent_legacy_open(datagram: bytes, key: str) -> bytes:
    material, block = b"", b""
    while len(material) < 48:
        block = hashlib.md5(block + key.encode("utf-8")).digest()
        material += block
    raw = bytes(ord(c) for c in datagram.decode("utf-8"))
    dec = Cipher(algorithms.AES(material[:32]), modes.CBC(material[32:48])).decryptor()
    padded = dec.update(raw) + dec.finalize()
    return padded[: -padded[-1]]


def test_legacy_wrong_key_and_garbage() -> None:
    sealed = LegacyCodec(["a"]).seal(b'{"x":1}', 0)
    with pytest.raises(OpenError) as info:
        LegacyCodec(["b"]).open(sealed)
    assert info.value.reason in {"bad_key"}
    for junk in (b"\xff\xfe", b"abc", b"\xc3\xa9" * 7):
        with pytest.raises(OpenError):
            LegacyCodec(["a"]).open(junk)


@pytest.mark.parametrize("key", ["plain-ascii-key", "sécurité-鍵"])
def test_legacy_hellos_both_ways_with_an_independent_implementation(port: int, key: str) -> None:
    node = Discovery(port=port, broadcast=LOOPBACK_BROADCAST, key=key, encryption="node-discover",
                     hello_interval=0.2, check_interval=0.3, node_timeout=0.6, ignore_process=False)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        peer.bind(("0.0.0.0", port))
        peer.settimeout(2)
        try:
            # a node-discover-style hello: no seq, negative fractional weight
            js_hello = orjson.dumps({"event": "hello", "pid": "js-pid", "iid": "js-iid", "hostName": "js",
                                     "data": {"isMaster": False, "isMasterEligible": True, "weight": -0.17,
                                              "address": "127.0.0.1"}})
            peer.sendto(independent_legacy_seal(js_hello, key), (LOOPBACK_BROADCAST, port))
            eventually(lambda: "js-iid" in node.nodes, 2, "our node sees the independent peer")
            assert node.nodes["js-iid"].weight == -0.17
            for _ in range(50):
                datagram, _ = peer.recvfrom(4096)
                packet = orjson.loads(independent_legacy_open(datagram, key))
                if packet["iid"] == node.me.id and packet["event"] == "hello":
                    break
            else:
                raise AssertionError("no hello from our node")
            assert packet["data"]["isMasterEligible"] is True and packet["hostName"] == node.me.hostname
        finally:
            node.stop()


# ----------------------------------------------------------------- fuzzing
def _keyed_core(key: object, encryption: str | None) -> DiscoveryCore:
    core = DiscoveryCore(build_options(key=key, encryption=encryption, hostname="h", ignore_process=False),
                         pid="mine", iid="me")  # type: ignore[arg-type]
    core.start(0.0, 1_700_000_000.0)
    core.join("chat")
    return core


AEAD_CORE = _keyed_core("fuzz", None)
LEGACY_CORE = _keyed_core("fuzz", "node-discover")
PEER_PACKET = orjson.dumps({"event": "hello", "pid": "x", "iid": "peer", "hostName": "h", "seq": 3,
                            "data": {"isMaster": True, "isMasterEligible": True, "weight": 2}})


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=400), legacy=st.booleans())
def test_fuzz_keyed_receive_path_random_bytes(raw: bytes, legacy: bool) -> None:
    core = LEGACY_CORE if legacy else AEAD_CORE
    out = core.datagram_received(1.0, raw, ("10.0.0.1", 1))
    assert not [a for a in out if isinstance(a, Emit) and a.event in ("error", "promotion", "demotion")]


@settings(max_examples=300, deadline=None)
@given(positions=st.lists(st.integers(0, 10_000), min_size=1, max_size=6), legacy=st.booleans(),
       insert=st.binary(max_size=8), cut=st.integers(0, 400))
def test_fuzz_mutated_sealed_packets(positions: list[int], legacy: bool, insert: bytes, cut: int) -> None:
    codec = LegacyCodec(["fuzz"]) if legacy else AeadCodec(["fuzz"])
    original = codec.seal(PEER_PACKET, 1_700_000_000.0)
    sealed = bytearray(original)
    for pos in positions:
        sealed[pos % len(sealed)] ^= 1 + pos % 255
    mutated = bytes(sealed[:cut]) + insert + bytes(sealed[cut:])
    assume(mutated != original)
    core = _keyed_core("fuzz", "node-discover" if legacy else None)
    out = core.datagram_received(1.0, mutated, ("10.0.0.1", 1))
    allowed = {"added", "master", "helloReceived"}
    assert {a.event for a in out if isinstance(a, Emit)} <= allowed
    if not legacy:  # authenticated: a mutated packet never gets in
        assert out == []


def test_keyed_node_never_transmits_plaintext_json() -> None:
    for encryption in (None, "node-discover"):
        core = _keyed_core("k", encryption)
        actions = core.tick(5.0) + core.promote(5.0) + (core.send(5.0, "chat", {"secret": 1}) or [])
        actions += core.stop(6.0)
        sent = [a.datagram for a in actions if isinstance(a, Transmit)]
        assert len(sent) >= 3
        for datagram in sent:
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(datagram)
            assert b"secret" not in datagram and b"hello" not in datagram


# ------------------------------------------------------- review regressions
def test_captures_from_before_a_watcher_started_cannot_resurrect_a_dead_master() -> None:
    sim = Sim()
    leader = sim.add(weight=9, key="k", **T)
    sim.run_until(10)
    early = _captures_of(sim, leader)
    watcher = sim.add(weight=1, key="k", **T)
    sim.run_until(15)
    assert "n0000" in sim.nodes[watcher].core.nodes
    sim.kill(leader)
    sim.run_until(18)
    assert sim.masters() == [watcher]
    for datagram in early[-20:]:
        sim.inject(datagram)
        sim.run_until(sim.now + 0.1)
    assert "n0000" not in sim.nodes[watcher].core.nodes and sim.masters() == [watcher]
    assert len(sim.events(watcher, "promotion")) == 1 and not sim.events(watcher, "demotion")


def test_a_fast_sender_clock_does_not_outlast_the_replay_memory() -> None:
    sim = Sim()
    fast = sim.add(weight=2, key="k", replay_window=30.0, **T)
    watcher = sim.add(weight=1, key="k", replay_window=30.0, **T)
    sim.nodes[fast].core.sync_wall_clock(sim.now, sim.now + 25)  # 25 s ahead, inside the window
    sim.run_until(3)
    last = _captures_of(sim, fast)[-1]
    sim.stop(fast)
    sim.run_until(3 + 35)  # the capture's clock is now only 25 + 3 - 38 = -10 s off: inside the window
    sim.inject(last)
    assert sim.nodes[watcher].core.nodes == {}


def test_guard_close_never_lowers_what_was_seen() -> None:
    from pydiscover.security import ReplayGuard

    guard = ReplayGuard(retention=100)
    assert all(guard.accept("i", seq, 0) for seq in (1, 2, 3, 4, 6, 7, 8, 9, 10))
    guard.close("i", 5, 0)
    assert not guard.accept("i", 8, 0) and not guard.accept("i", 5, 0)
    assert guard.highest("i") == 10 and guard.accept("i", 11, 0)
    fresh = ReplayGuard(retention=100)
    assert fresh.accept("j", 50, 0) and not fresh.accept("j", 49, 0) and fresh.accept("j", 51, 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.sampled_from([0.0, 0.5, 3.0, 11.0]), st.booleans()),
                max_size=120))
def test_the_guard_never_forgets_an_instance_sooner_than_retention_after_it_was_last_heard(
        steps: list[tuple[int, float, bool]]) -> None:
    """``accept`` moves no ordering; eviction must still keep every instance heard within
    ``retention``, and forget them all once everyone has been silent that long."""
    from pydiscover.security import ReplayGuard

    guard = ReplayGuard(retention=10.0, capacity=1_000)
    last: dict[str, float] = {}
    seqs: dict[str, int] = {}
    now = 0.0
    for n, step, check in steps:
        now += step
        iid = f"i{n}"
        seqs[iid] = seqs.get(iid, 0) + 1
        assert guard.accept(iid, seqs[iid], now)
        last[iid] = now
        if check:
            guard.forget_expired(now)
        for known, heard in last.items():
            if now < heard + 10.0:
                assert guard.highest(known) == seqs[known]  # still refuses its old packets
    if last:
        guard.forget_expired(max(last.values()) + 10.0)
        assert len(guard) == 0


def test_over_capacity_the_guard_forgets_the_instances_not_heard_again_first() -> None:
    from pydiscover.security import ReplayGuard

    guard = ReplayGuard(retention=100.0, capacity=3)
    for seq, iid in enumerate(("a", "b", "c")):
        assert guard.accept(iid, 1, float(seq))
    assert guard.accept("a", 2, 5.0)  # a is heard again; b and c are not
    assert guard.accept("d", 1, 6.0)  # over capacity: b (not heard since) goes, not a
    assert guard.highest("b") is None and guard.highest("a") == 2 and len(guard) == 3


def test_an_old_goodbye_does_not_remove_a_node_that_said_hello_since() -> None:
    core = DiscoveryCore(build_options(hostname="h"), pid="me", iid="me")
    core.start(0.0)
    core.datagram_received(0.1, orjson.dumps({"event": "hello", "pid": "p", "iid": "a", "seq": 10,
                                              "data": {"isMaster": False, "weight": 1}}), ("10.0.0.1", 1))
    old_bye = orjson.dumps({"event": "pydiscover.goodbye", "pid": "p", "iid": "a", "seq": 7, "data": {}})
    assert core.datagram_received(0.2, old_bye, ("10.0.0.1", 1)) == []
    assert "a" in core.nodes


def test_legacy_key_ring_opens_every_packet_of_any_key() -> None:
    ring = LegacyCodec(["A", "B"])
    sealer = LegacyCodec(["B"])
    for i in range(3000):
        packet = orjson.dumps({"event": "hello", "i": i, "pad": "x" * (i % 37)})
        assert ring.open(sealer.seal(packet, 0)).plaintext == packet


def test_a_wall_clock_correction_is_picked_up_without_restart() -> None:
    sim = Sim()
    a = sim.add(key="k", replay_window=30.0, **T)
    b = sim.add(key="k", replay_window=30.0, **T)
    sim.nodes[b].core.sync_wall_clock(sim.now, sim.now + 120)  # booted before NTP, 2 minutes off
    sim.run_until(3)
    assert sim.nodes[a].core.nodes == {} and sim.nodes[b].core.dropped["outside_window"] > 0
    sim.nodes[b].core.sync_wall_clock(sim.now, sim.now)  # the runtime does this every tick
    sim.run_until(6)
    assert len(sim.nodes[a].core.nodes) == 1 and len(sim.nodes[b].core.nodes) == 1


def test_a_forged_plaintext_seq_cannot_silence_a_node_for_long() -> None:
    sim = Sim()
    sim.add(weight=1, **T)  # the victim, n0000
    watcher = sim.add(weight=2, **T)
    sim.run_until(3)
    forged = orjson.dumps({"event": "hello", "pid": "p0", "iid": "n0000", "hostName": "sim", "seq": 2**62,
                           "data": {"isMaster": False, "isMasterEligible": True, "weight": 1}})
    sim.inject(forged)
    sim.run_until(3 + 2 * 2.0 + 2.0 + 2.5)  # guard memory (2 x master_timeout) + a timeout + slack
    assert "n0000" in sim.nodes[watcher].core.nodes
    assert sim.nodes[watcher].core.nodes["n0000"].last_seen > 9


def test_legacy_receive_limit_takes_node_discovers_big_packets() -> None:
    core = _keyed_core("k", "node-discover")
    advert = "é" * 500
    packet = orjson.dumps({"event": "hello", "pid": "js", "iid": "big", "hostName": "js",
                           "data": {"isMaster": False, "isMasterEligible": True, "weight": 1,
                                    "advertisement": advert}})
    datagram = LegacyCodec(["k"]).seal(packet, 0)
    assert len(datagram) > 1472
    core.datagram_received(1.0, datagram, ("127.0.0.1", 1))
    assert core.nodes["big"].advertisement == advert
