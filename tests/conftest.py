"""Pytest fixtures and waiting helpers for real-socket tests (loopback only: see DESIGN.md, safety).

The helpers shared with the benchmarks live in ``testbed/``; ``free_udp_port`` is re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sysconfig
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testbed.ports import free_udp_port

if TYPE_CHECKING:
    from pydiscover import AsyncDiscovery

__all__ = ["LOOPBACK_BROADCAST", "async_eventually", "eventually", "free_udp_port", "running"]

LOOPBACK_BROADCAST = "127.255.255.255"


def pytest_sessionstart(session: pytest.Session) -> None:
    """Under ``PYDISCOVER_EXPECT_INSTALLED`` (scripts/test), refuse to test anything but the installed wheel.

    A stray ``PYTHONPATH``, an editable install or a ``pydiscover/`` folder beside the tests
    would make a green run say nothing about what users install, so the session stops.
    """
    if not os.environ.get("PYDISCOVER_EXPECT_INSTALLED"):
        return
    import pydiscover

    where = Path(pydiscover.__file__).resolve()
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    source = os.environ.get("PYDISCOVER_SOURCE_TREE")
    problems: list[str] = []
    if not any(where.is_relative_to(folder) for folder in site):
        problems.append(f"it is not in this interpreter's site-packages ({', '.join(map(str, sorted(site)))})")
    if source and where.is_relative_to(Path(source).resolve()):
        problems.append(f"it is inside the source tree PYDISCOVER_SOURCE_TREE={source}")
    if problems:
        pytest.exit(f"PYDISCOVER_EXPECT_INSTALLED is set but pydiscover was imported from {where}: "
                    + "; ".join(problems), returncode=1)


@contextlib.asynccontextmanager
async def running(*nodes: AsyncDiscovery) -> AsyncIterator[None]:
    """Start ``nodes`` in order; stop them all at the end, whatever happened."""
    try:
        for d in nodes:
            await d.start()
        yield
    finally:
        for d in nodes:
            await d.stop()


def eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> float:
    """Wait until ``condition()`` holds; return the seconds it took.  Fails the test at ``timeout``."""
    start = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.002)


async def async_eventually(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.002)


@pytest.fixture
def port() -> int:
    return free_udp_port()
