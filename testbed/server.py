"""What the servers the tests run (Redis, etcd) share: stop, the log's tail, a context manager.

Each subclass starts its own process on loopback in :meth:`ServerProcess.start`; a test
may stop and start it again on the same ports and data (a restart).
"""

from __future__ import annotations

import subprocess
from pathlib import Path


class ServerProcess:
    """One server process; a context manager that always stops it."""

    #: For messages ("no redis log").
    kind = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def start(self, timeout: float = 10.0) -> None:
        raise NotImplementedError

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (then SIGKILL) and reap; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
        self._reaped(proc)

    def _reaped(self, proc: subprocess.Popen[bytes]) -> None:
        """Release what the process held open (a pipe, a log file)."""

    def log(self) -> str:
        """The last 2,000 characters of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return f"(no {self.kind} log)"

    def __enter__(self) -> ServerProcess:
        if self.proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
