"""Every option is validated at construction with a message that names it."""

from __future__ import annotations

import pytest

from pydiscover import Discovery
from pydiscover.options import build_options, default_weight, parse_endpoint

LOOP = {"broadcast": "127.255.255.255"}


@pytest.mark.parametrize(
    ("options", "error", "names"),
    [
        ({"hello_interval": "1"}, TypeError, "hello_interval"),
        ({"hello_interval": 0}, ValueError, "hello_interval"),
        ({"hello_interval": True}, TypeError, "hello_interval"),
        ({"hello_interval": 0.001, "node_timeout": 0.01, "check_interval": 0.01}, ValueError, "hello_interval"),
        ({"node_timeout": float("nan")}, ValueError, "node_timeout"),
        ({"node_timeout": 0.5}, ValueError, "node_timeout"),
        ({"master_timeout": 1.0}, ValueError, "master_timeout"),
        ({"check_interval": 5}, ValueError, "check_interval"),
        ({"port": 0}, ValueError, "port"),
        ({"port": 70000}, ValueError, "port"),
        ({"port": "12345"}, TypeError, "port"),
        ({"address": "not-an-ip"}, ValueError, "address"),
        ({"broadcast": "ff02::1"}, ValueError, "broadcast"),
        ({"multicast": "10.0.0.1"}, ValueError, "multicast"),
        ({"multicast_ttl": 300, "multicast": "239.1.2.3"}, ValueError, "multicast_ttl"),
        ({"interface": "127.0.0.1"}, ValueError, "interface"),
        ({"interface": "lo", "multicast": "239.1.2.3"}, ValueError, "interface"),
        ({"interface": "nosuchif0", "multicast": "ff02::1:4242"}, ValueError, "interface"),
        ({"broadcast": "127.255.255.255", "multicast": "239.1.2.3"}, ValueError, "exclusive"),
        ({"unicast": 5}, TypeError, "unicast"),
        ({"unicast": ""}, ValueError, "unicast"),  # [] is unicast mode with no destination yet
        ({"unicast": "127.0.0.1:99999"}, ValueError, "unicast"),
        ({"unicast": "[::1"}, ValueError, "unicast"),
        ({"masters_required": 0}, ValueError, "masters_required"),
        ({"weight": "heavy"}, TypeError, "weight"),
        ({"weight": float("inf")}, TypeError, "weight"),
        ({"client": 1}, TypeError, "client"),
        ({"reuse_addr": None}, TypeError, "reuse_addr"),
        ({"hostname": ""}, TypeError, "hostname"),
        ({"advertisement": {1, 2}}, TypeError, "advertisement"),
        ({"max_datagram": 10}, ValueError, "max_datagram"),
        ({"address": "127.0.0.1", "broadcast": "127.255.255.255"}, ValueError, "receive no broadcast"),
        ({"address": "127.0.0.1", "multicast": "239.1.2.3"}, ValueError, "receive no multicast"),
        ({"address": "::"}, ValueError, "IPv6 has no broadcast"),
        ({"address": "::", "multicast": "239.1.2.3"}, ValueError, "is IPv4"),
        ({"namespace": 7}, TypeError, "namespace"),
        ({"namespace": ""}, ValueError, "namespace"),
        ({"namespace": "a b"}, ValueError, "namespace"),
        ({"namespace": "x" * 129}, ValueError, "namespace"),
    ],
)
def test_bad_option_is_rejected_by_name(options: dict[str, object], error: type[Exception], names: str) -> None:
    with pytest.raises(error, match=names):
        build_options(**options)  # type: ignore[arg-type]


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="helloInterval"):
        Discovery(helloInterval=1000, start=False, **LOOP)


@pytest.mark.parametrize(
    ("options", "error", "text"),
    [
        ({"key": 5}, TypeError, "key"),
        ({"key": ""}, ValueError, "empty"),
        ({"key": []}, ValueError, "at least one"),
        ({"key": ["a", None]}, TypeError, "key"),
        ({"key": "a", "encryption": "rot13"}, ValueError, "encryption"),
        ({"encryption": "aead"}, ValueError, "needs a key"),
        ({"key": "a", "replay_window": -1}, ValueError, "replay_window"),
    ],
)
def test_bad_key_options(options: dict[str, object], error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        build_options(**options)  # type: ignore[arg-type]


def test_key_selects_the_codec() -> None:
    assert build_options().codec.name == "plaintext"
    assert build_options(key="s").codec.name == "aead"
    assert build_options(key=["s", b"t"], encryption="aead").codec.name == "aead"
    assert build_options(key="s", encryption="node-discover").codec.name == "node-discover"


def test_default_timings_survive_loss() -> None:
    """Hello every 0.5 s, removal after 3.25 s: six hellos in a row must be lost (docs/concepts.rst)."""
    o = build_options()
    assert (o.hello_interval, o.check_interval, o.node_timeout, o.master_timeout) == (0.5, 2.0, 3.25, 3.25)
    hellos_in_window = int(o.node_timeout / o.hello_interval)
    assert hellos_in_window == 6 and o.node_timeout - hellos_in_window * o.hello_interval == o.hello_interval / 2
    assert 0.05**hellos_in_window < 2e-8  # 5 % loss: one false removal per ~64 million windows


def test_other_defaults_follow_node_discover() -> None:
    o = build_options()
    assert (o.port, o.broadcast, o.address, o.masters_required) == (12345, "255.255.255.255", "0.0.0.0", 1)
    assert o.ignore_process and o.ignore_instance and o.reuse_addr and not o.client
    assert build_options(node_timeout=3).master_timeout == 3.0  # masterTimeout defaults to nodeTimeout


def test_default_weight_prefers_the_older_process() -> None:
    assert default_weight(1_700_000_000_000) > default_weight(1_700_000_000_500)
    assert default_weight(1_700_000_000_000) == -0.17


def test_advertisement_over_budget_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="over the 1472-byte datagram budget"):
        Discovery(advertisement={"blob": "x" * 2000}, start=False, **LOOP)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.2", ("127.0.0.2", 12345)),
        ("127.0.0.2:4000", ("127.0.0.2", 4000)),
        ("[::1]:4000", ("::1", 4000)),
        ("::1", ("::1", 12345)),
        ("[fe80::1%lo]:7", ("fe80::1%lo", 7)),
        ("localhost:5", ("127.0.0.1", 5)),
    ],
)
def test_unicast_forms(text: str, expected: tuple[str, int]) -> None:
    assert parse_endpoint(text, 12345) == expected


def test_datagram_budget_defaults_per_ip_version() -> None:
    assert build_options(broadcast="127.255.255.255").max_datagram == 1472
    assert build_options(multicast="ff02::1:4242").max_datagram == 1452
    assert build_options(unicast="[::1]:5").max_datagram == 1452
    assert build_options(address="239.1.2.3", multicast="239.1.2.3").multicast == "239.1.2.3"  # bind the group


def test_unicast_comma_string_and_list_agree() -> None:
    a = build_options(unicast="127.0.0.2:1, 127.0.0.3:2").unicast
    b = build_options(unicast=["127.0.0.2:1", "127.0.0.3:2"]).unicast
    assert a == b == (("127.0.0.2", 1), ("127.0.0.3", 2))


def test_read_coalesce_is_validated() -> None:
    assert build_options().read_coalesce == 0.02
    assert build_options(read_coalesce=0).read_coalesce == 0.0
    with pytest.raises(ValueError, match="read_coalesce"):
        build_options(read_coalesce=0.5)
    with pytest.raises(ValueError, match="read_coalesce"):
        build_options(read_coalesce=-1)
    with pytest.raises(TypeError, match="read_coalesce"):
        build_options(read_coalesce="1ms")
