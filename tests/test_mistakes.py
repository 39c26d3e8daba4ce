"""Mistakes explain themselves: typed options, hints for node-discover habits, errors that say what to fix."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOPBACK_BROADCAST, async_eventually, free_udp_port

import pydiscover
from pydiscover import (
    AsyncDiscovery,
    AsyncServiceDiscovery,
    BindError,
    Discovery,
    DiscoveryError,
    PacketTooLarge,
    ServiceDiscovery,
    TaskError,
    TransportError,
    TransportUnavailable,
)
from pydiscover.core import DiscoveryCore
from pydiscover.options import OPTION_HELP, build_options
from pydiscover.security import LegacyCodec
from pydiscover.transports.memory import MemoryBus, MemoryTransport

LOOP = {"broadcast": LOOPBACK_BROADCAST}
QUICK = {"hello_interval": 0.1, "check_interval": 0.2, "node_timeout": 0.6, "ignore_process": False}
CLASSES = [Discovery, AsyncDiscovery, ServiceDiscovery, AsyncServiceDiscovery]


# ------------------------------------------------------------ typed options
@pytest.mark.parametrize("cls", CLASSES)
def test_options_are_explicit_keyword_only_parameters(cls: type) -> None:
    parameters = inspect.signature(cls).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in parameters.values()), "no **kwargs"
    assert all(p.kind is p.KEYWORD_ONLY for p in parameters.values())
    assert parameters["hello_interval"].annotation == "float"
    assert parameters["port"].annotation == "int"


#: Options the runtime builds objects from (not validated by build_options).
RUNTIME_CHOSEN = {"transport", "registry", "coordinator"}


def test_the_signatures_agree_with_each_other_and_with_the_validator() -> None:
    """Defaults are written once (``Options``); the signatures that repeat the names must not drift."""
    engine = inspect.signature(AsyncDiscovery).parameters
    facade = inspect.signature(Discovery).parameters
    validator = inspect.signature(build_options).parameters
    assert set(facade) - set(engine) == {"start", "stop_on_sigterm"}
    for name, parameter in engine.items():
        assert facade[name].default == parameter.default and facade[name].annotation == parameter.annotation, name
        if name not in RUNTIME_CHOSEN:
            assert validator[name].default == parameter.default, name
    assert set(validator) | RUNTIME_CHOSEN == set(engine)


@pytest.mark.parametrize("cls", CLASSES)
def test_every_option_is_documented_with_its_default(cls: type) -> None:
    doc = cls.__doc__ or ""
    for name, parameter in inspect.signature(cls).parameters.items():
        assert name in OPTION_HELP, f"{name} has no help text"
        assert f":param {name}: {OPTION_HELP[name]}  Default: ``{parameter.default!r}``." in doc


@pytest.mark.skipif(shutil.which("mypy") is None and not (Path(sys.executable).parent / "mypy").exists(),
                    reason="mypy not installed")
def test_mypy_strict_catches_a_misspelled_or_mistyped_option(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent("""
        from pydiscover import Discovery, AsyncDiscovery

        a = Discovery(hello_intervl=1.0, start=False)
        b = Discovery(port="12345", start=False)
        c = AsyncDiscovery(hello_interval=0.5, port=12345, broadcast="127.255.255.255")
        handler = c.on("added", print)
    """))
    env = dict(os.environ)
    package_parent = Path(pydiscover.__file__).resolve().parent.parent
    if package_parent.name != "site-packages":  # an editable install: mypy does not follow its import hook
        env["MYPYPATH"] = str(package_parent)
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert 'Unexpected keyword argument "hello_intervl"' in out
    assert 'incompatible type "str"; expected "int"' in out
    assert "user_script.py:6" not in out, "the correct call must type-check"


def test_on_returns_the_handler_it_was_given() -> None:
    d = Discovery(start=False, **LOOP)

    def handler(node: Any) -> None:
        pass

    assert d.on("added", handler) is handler
    assert d.once("removed", handler) is handler

    @d.on("promotion")
    def decorated(me: Any) -> None:
        pass

    assert callable(decorated) and decorated.__name__ == "decorated"


# ------------------------------------------------------ node-discover habits
@pytest.mark.parametrize("cls", [Discovery, ServiceDiscovery])
@pytest.mark.parametrize(
    ("given", "hint"),
    [
        ("helloInterval", "did you mean hello_interval (in seconds)?"),
        ("nodeTimeout", "did you mean node_timeout (in seconds)?"),
        ("multicastTTL", "did you mean multicast_ttl?"),
        ("mastersRequired", "did you mean masters_required?"),
        ("hello_intervl", "did you mean hello_interval (in seconds)?"),
        ("nonsense", "the options are: address,"),
    ],
)
def test_unknown_option_names_the_class_and_the_nearest_option(cls: type, given: str, hint: str) -> None:
    with pytest.raises(TypeError) as info:
        cls(start=False, **{given: 1000}, **LOOP)
    text = str(info.value)
    assert text.startswith(f"{cls.__name__}() got an unexpected keyword argument {given!r}")
    assert hint in text


async def test_unknown_option_on_the_async_classes() -> None:
    with pytest.raises(TypeError, match=r"AsyncServiceDiscovery\(\).*did you mean check_interval"):
        AsyncServiceDiscovery(checkInterval=1)  # type: ignore[call-arg]


@pytest.mark.parametrize("name", ["hello_interval", "check_interval", "node_timeout", "master_timeout"])
def test_milliseconds_are_refused_with_a_hint(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name}=2000: options are in seconds.*{name}=2 for 2000 ms"):
        Discovery(start=False, **{name: 2000}, **LOOP)


def test_node_discover_defaults_in_milliseconds_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        Discovery(hello_interval=1000, start=False)
    with pytest.raises(ValueError, match="allow_long_intervals=True"):
        Discovery(hello_interval=1000, node_timeout=2000, start=False)


def test_long_intervals_are_accepted_when_asked_for() -> None:
    options = build_options(hello_interval=60, node_timeout=300, check_interval=60, allow_long_intervals=True)
    assert (options.hello_interval, options.node_timeout, options.master_timeout) == (60.0, 300.0, 300.0)
    d = Discovery(start=False, hello_interval=120, node_timeout=400, allow_long_intervals=True, **LOOP)
    assert d.options.hello_interval == 120.0
    with pytest.raises(TypeError, match="allow_long_intervals"):
        build_options(allow_long_intervals="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------- exceptions
def test_every_library_exception_shares_one_base_and_keeps_its_builtin_one() -> None:
    for cls, builtin in [(PacketTooLarge, ValueError), (BindError, OSError), (TransportUnavailable, ConnectionError),
                         (TransportError, OSError), (TaskError, Exception)]:
        assert issubclass(cls, DiscoveryError) and issubclass(cls, builtin), cls
    assert pydiscover.DiscoveryError is DiscoveryError


def test_bind_error_carries_the_hint() -> None:
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("0.0.0.0", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(BindError, match=r"in use.*SO_REUSEADDR.*reuse_addr=True") as info:
            Discovery(port=port, reuse_addr=False, **LOOP)
        assert isinstance(info.value, DiscoveryError) and info.value.port == port
    finally:
        holder.close()


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("pydiscover").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


async def test_wait_for_raises_the_builtin_timeout_error() -> None:
    async with AsyncDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK) as d:
        with pytest.raises(TimeoutError) as info:  # the builtin, also on 3.10
            await d.wait_for("added", timeout=0.05)
        assert type(info.value) is TimeoutError


async def test_services_ready_raises_the_builtin_timeout_error() -> None:
    async with AsyncServiceDiscovery(transport=MemoryTransport(MemoryBus()), **QUICK) as d:
        d.need("nobody")
        with pytest.raises(TimeoutError) as info:
            await d.ready(timeout=0.05)
        assert type(info.value) is TimeoutError


def test_sync_wait_for_raises_the_builtin_timeout_error() -> None:
    with Discovery(port=free_udp_port(), **LOOP, **QUICK) as d, pytest.raises(TimeoutError) as info:
        d.wait_for("added", lambda node: node.id == "nobody", timeout=0.05)
    assert type(info.value) is TimeoutError


# ----------------------------------------------------------------- handlers
async def test_a_failing_handler_is_logged_with_its_event_and_arguments(caplog: pytest.LogCaptureFixture) -> None:
    bus = MemoryBus()
    calls: list[int] = []

    def wrong_arity() -> None:  # "added" passes (node)
        calls.append(1)

    caplog.set_level(logging.ERROR, logger="pydiscover")
    async with AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as b:
        a.on("added", wrong_arity)
        a.on("helloReceived", wrong_arity)
        await async_eventually(lambda: len(a.nodes) == 1 and len(b.nodes) == 1, 3, "mutual view")
        await asyncio.sleep(0)
        await b.wait_for("helloEmitted", timeout=2)
        await b.wait_for("helloEmitted", timeout=2)
    assert calls == []
    messages = [r.getMessage() for r in caplog.records if r.name == "pydiscover.events"]
    added = [m for m in messages if "for event 'added'" in m]
    assert added and "handlers of 'added' are called with (node)" in added[0], messages
    hello = [m for m in messages if "for event 'helloReceived'" in m]
    # several failures, logged once (the 1st, 10th, 100th... are logged)
    assert len(hello) == 1 and "(node, is_new)" in hello[0], messages


async def test_a_failing_coroutine_handler_names_its_event(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(data: Any, packet: Any) -> None:
        raise RuntimeError("boom")

    bus = MemoryBus()
    async with AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as a, \
            AsyncDiscovery(transport=MemoryTransport(bus), **QUICK) as b:
        a.join("jobs", broken)
        await async_eventually(lambda: len(b.nodes) == 1, 3, "b sees a")
        b.send("jobs", {"n": 1})
        await async_eventually(lambda: any("for event 'jobs'" in r.getMessage() for r in caplog.records), 3,
                               "logged")
    record = next(r for r in caplog.records if "for event 'jobs'" in r.getMessage())
    assert record.levelno == logging.ERROR and "RuntimeError: boom" in record.getMessage()


# --------------------------------------------------------- network errors
async def test_socket_errors_reach_the_error_event_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    """Unicast to a broadcast address without SO_BROADCAST: the kernel refuses every send (EACCES).

    Nothing leaves the host: the send fails locally, and the address is loopback anyway.
    """
    port = free_udp_port()
    errors: list[BaseException] = []
    d = AsyncDiscovery(unicast=f"{LOOPBACK_BROADCAST}:{port}", port=port, hello_interval=0.02, node_timeout=0.5,
                       check_interval=0.2)
    d.on("error", errors.append)
    caplog.set_level(logging.DEBUG, logger="pydiscover")
    async with d:
        await async_eventually(lambda: d.stats["dropped"].get("send_error", 0) >= 12, 3, "twelve refused sends")
    assert len(errors) == 1, errors  # one report, not one per packet
    said = [r for r in caplog.records if "send_error" in r.getMessage() and r.name == "pydiscover.transports.udp"]
    assert len(said) >= 12  # every one logged ...
    warned = [r.getMessage() for r in said if r.levelno == logging.WARNING]
    assert [w.rsplit("(", 1)[1] for w in warned] == ["send_error: 1 so far)", "send_error: 10 so far)"], warned
    error = errors[0]
    assert isinstance(error, TransportError) and isinstance(error, OSError)
    assert error.reason == "send_error" and "Permission denied" in str(error)


# ------------------------------------------------------ mixed ciphers
def test_aead_node_warns_once_about_node_discover_ciphertext(caplog: pytest.LogCaptureFixture) -> None:
    legacy = LegacyCodec(["secret"])
    packet = legacy.seal(b'{"event":"hello","pid":"p","iid":"i","hostName":"h","data":{"isMaster":false,'
                         b'"isMasterEligible":true,"weight":1,"address":"127.0.0.1"}}', 0)
    core = DiscoveryCore(build_options(key="secret", hostname="h"), pid="me", iid="me")
    core.start(0.0, 0.0)
    caplog.set_level(logging.WARNING, logger="pydiscover")
    for i in range(5):
        core.datagram_received(0.1 * i, packet, ("127.0.0.1", 12345))
    assert core.dropped["node_discover_cipher"] == 5 and not core.nodes
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and 'encryption="node-discover"' in warnings[0].getMessage()


def test_node_discover_ciphertext_starting_with_a_brace_is_still_recognised() -> None:
    """The cipher's IV is fixed, so for about 1 key in 256 every hello's ciphertext starts with ``{``."""
    from pydiscover.security import AeadCodec, OpenError

    hello = b'{"event":"hello","pid":"p","iid":"i","hostName":"h","data":{"isMaster":false}}'
    keys = [k for k in (f"key{i}" for i in range(2000)) if LegacyCodec([k]).seal(hello, 0)[:1] == b"{"]
    assert keys, "no such key among the first 2000 (the odds say about 8)"
    for key in keys:
        with pytest.raises(OpenError) as info:
            AeadCodec(["mine"]).open(LegacyCodec([key]).seal(hello, 0))
        assert info.value.reason == "node_discover_cipher", key
    with pytest.raises(OpenError, match="plaintext"):
        AeadCodec(["mine"]).open(hello)  # real JSON still is plaintext


def test_a_node_discover_cipher_node_names_aead_peers(caplog: pytest.LogCaptureFixture) -> None:
    from pydiscover.security import AeadCodec

    sealed = AeadCodec(["secret"]).seal(b'{"event":"hello","pid":"p","iid":"i","hostName":"h","data":{}}', 0)
    core = DiscoveryCore(build_options(key="secret", encryption="node-discover", hostname="h"), pid="me", iid="me")
    core.start(0.0, 0.0)
    caplog.set_level(logging.WARNING, logger="pydiscover")
    core.datagram_received(0.1, sealed, ("127.0.0.1", 12345))
    assert core.dropped["aead"] == 1
    assert any('encryption="aead"' in r.getMessage() for r in caplog.records)


def test_a_failing_once_handler_is_named_as_written(caplog: pytest.LogCaptureFixture) -> None:
    from pydiscover.events import SafeEmitter

    def my_handler(value: int) -> None:
        raise ValueError("no")

    emitter = SafeEmitter()
    emitter.once("a", my_handler)
    caplog.set_level(logging.ERROR, logger="pydiscover")
    assert emitter.emit("a", 1)
    (record,) = [r for r in caplog.records if r.name == "pydiscover.events"]
    assert "handler test_a_failing_once_handler_is_named_as_written.<locals>.my_handler for event 'a'" in (
        record.getMessage())
    assert not emitter.has_listeners("a")
