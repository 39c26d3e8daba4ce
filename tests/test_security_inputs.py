"""Whatever the encoding, a remote packet never reaches a local-only event or a reserved name."""

from __future__ import annotations

import orjson
import pytest

from pydiscover.core import DiscoveryCore, Emit
from pydiscover.options import build_options
from pydiscover.security import make_codec

RESERVED = ["error", "promotion", "demotion", "added", "removed", "master", "started", "stopped",
            "helloReceived", "helloEmitted", "check", "new_listener", "message"]


@pytest.mark.parametrize("encryption", [None, "aead", "node-discover"])
@pytest.mark.parametrize("event", RESERVED)
def test_sealed_reserved_events_are_dropped(encryption: str | None, event: str) -> None:
    key = None if encryption is None else "k"
    core = DiscoveryCore(build_options(key=key, encryption=encryption, hostname="h"), pid="me", iid="me")
    core.start(0.0, 1_700_000_000.0)
    packet = orjson.dumps({"event": event, "pid": "x", "iid": "y", "hostName": "h", "seq": 1,
                           "data": {"isMaster": True, "isMasterEligible": True, "weight": 9}})
    datagram = make_codec(key, encryption).seal(packet, 1_700_000_000.0)
    out = core.datagram_received(0.1, datagram, ("10.0.0.1", 1))
    assert not [a for a in out if isinstance(a, Emit)]
    assert core.dropped["reserved_event"] == 1
