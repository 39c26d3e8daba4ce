"""A private single-member ``etcd`` for the etcd registry tests: loopback only, its own data directory.

Each server runs in its own work directory on two free ports of 127.0.0.1 (client and peer), so
tests never meet a system etcd on 2379/2380.  The data directory is kept across :meth:`EtcdServer.stop`,
:meth:`EtcdServer.kill` and the next :meth:`EtcdServer.start` on the same ports: that is a restart
(or a crash and recovery) of the same cluster, with its keys, revisions and leases.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from testbed.ports import free_tcp_port
from testbed.server import ServerProcess

ETCD = "etcd"
INSTALL_HINT = "apt-get install etcd-server (not yet added to ./scripts/test)"


def etcd_server_missing() -> str | None:
    """Why no etcd server can be started here, else ``None``."""
    if shutil.which(ETCD) is None:
        return f"etcd is not installed (Debian package etcd-server): {INSTALL_HINT}"
    return None


def _port_free(port: int) -> bool:
    """Whether nothing listens on ``127.0.0.1:port`` (another etcd there would answer our health checks)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class EtcdServer(ServerProcess):
    """One single-member ``etcd`` on ``127.0.0.1``; a context manager that always stops it."""

    kind = "etcd"

    def __init__(
        self,
        workdir: Path,
        client_port: int | None = None,
        peer_port: int | None = None,
        extra: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.workdir = workdir
        self.client_port = client_port if client_port is not None else free_tcp_port()
        self.peer_port = peer_port if peer_port is not None else free_tcp_port()
        while self.peer_port == self.client_port:
            self.peer_port = free_tcp_port()
        self.extra = list(extra or [])
        self.name = f"testbed-{self.client_port}"
        self.starts = 0
        self._log_file: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "etcd.log"

    def command(self) -> list[str]:
        """The etcd command line; the same for every start, so a restart reuses the data directory.

        ``--initial-cluster*`` only matter on the first start: once ``data/member/wal`` exists etcd
        ignores them (and ``--initial-cluster-state new``) and rejoins its own cluster.  Metrics
        stay on the client port (etcd 3.4 opens no extra metrics port unless asked).
        """
        return [
            ETCD,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.client_url,
            "--advertise-client-urls", self.client_url,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", f"{self.name}={self.peer_url}",
            "--initial-cluster-token", self.name,
            "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr",
            *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait (bounded) until ``GET /health`` on the client port says healthy.

        The log goes to a file (appended across restarts) rather than a pipe: etcd logs a lot, and a
        pipe nobody reads would block it.  ``ETCD_*`` variables are dropped from the environment so
        a stray configuration cannot add flags (etcd refuses a flag given both ways).
        """
        assert self.proc is None, "already running"
        for port in (self.client_port, self.peer_port):
            if not _port_free(port):
                raise RuntimeError(f"127.0.0.1:{port} is in use: /health there would not be this etcd's")
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        self._log_file = self.log_path.open("ab")
        self._log_file.write(f"--- start {self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._reaped(self.proc)
                self.proc = None
                raise RuntimeError(f"etcd exited at start\n{self.log()}")
            if self.healthy():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"etcd on port {self.client_port} not healthy within {timeout}s\n{self.log()}")

    def healthy(self, timeout: float = 0.5) -> bool:
        """One ``GET /health``: true once the member has a leader and serves requests."""
        try:
            with urllib.request.urlopen(f"{self.client_url}/health", timeout=timeout) as resp:
                body = json.loads(resp.read())
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return isinstance(body, dict) and str(body.get("health")).lower() == "true"

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL and reap: a crash, no clean shutdown.  :meth:`start` afterwards recovers from the WAL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.kill()
        proc.wait(timeout=timeout)
        self._reaped(proc)

    def _reaped(self, proc: subprocess.Popen[bytes]) -> None:
        """Collect the exit status and close our handle on the log file."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()
            self._log_file = None

    def __enter__(self) -> EtcdServer:
        super().__enter__()
        return self
