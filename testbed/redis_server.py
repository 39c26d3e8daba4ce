"""A private ``redis-server`` for the Redis transport tests: loopback only, no persistence.

Each server runs in its own temporary directory on a free port of 127.0.0.1, with
``--save '' --appendonly no`` so nothing outlives it.  :meth:`RedisServer.stop` and
:meth:`RedisServer.start` can be called again on the same port (a restart).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

from testbed.ports import free_tcp_port
from testbed.server import ServerProcess

REDIS_SERVER = "redis-server"
INSTALL_HINT = "apt-get install redis-server (./scripts/test installs it when run as root)"


def redis_server_missing() -> str | None:
    """Why no Redis server can be started here, else ``None``."""
    if shutil.which(REDIS_SERVER) is None:
        return f"redis-server is not installed (Debian package redis-server): {INSTALL_HINT}"
    return None


class RedisServer(ServerProcess):
    """One ``redis-server`` process on ``127.0.0.1:port``; a context manager that always stops it."""

    kind = "redis"

    def __init__(self, workdir: Path, port: int | None = None, extra: list[str] | None = None) -> None:
        super().__init__()
        self.workdir = workdir
        self.port = port if port is not None else free_tcp_port()
        self.extra = list(extra or [])
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (bounded) until it accepts connections and answers PING."""
        assert self.proc is None, "already running"
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            REDIS_SERVER,
            "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--logfile", str(self.log_path),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise RuntimeError(f"redis-server exited at start: {err}\n{self.log()}")
            if self.answers_ping():
                return
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} not ready within {timeout}s\n{self.log()}")

    def answers_ping(self) -> bool:
        """One raw PING over TCP (TLS servers: only whether the port accepts connections)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if "--tls-port" in self.extra:
                    return True
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _reaped(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.stderr is not None:
            with contextlib.suppress(OSError):
                proc.stderr.close()

    def __enter__(self) -> RedisServer:
        super().__enter__()
        return self
