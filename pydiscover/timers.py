"""The core's schedule: the hello beat, the periodic check, prompt replies, and the pause watch.

Times are the runtime clock's seconds, always passed in: this unit never reads a clock.
"""

from __future__ import annotations

import math
import random

#: A reply to a newcomer waits a random part of a window: this many seconds, plus the next
#: for each member we know of, at most a quarter hello interval.  12.5 ms among 20 nodes;
#: 103 ms among 200, where a newcomer gets one reply per member spread over the window.
REPLY_WINDOW_BASE = 0.003
REPLY_WINDOW_PER_PEER = 0.0005


class Timers:
    """When the next hello, check and reply are due, and whether we were not run for a while."""

    __slots__ = (
        "_last_hello_at",
        "_last_reply",
        "_rng",
        "check_interval",
        "hello_interval",
        "last_run",
        "next_check",
        "next_hello",
        "paused_if_after",
        "reply_at",
    )

    def __init__(self, *, hello_interval: float, check_interval: float, rng: random.Random) -> None:
        self.hello_interval = hello_interval
        self.check_interval = check_interval
        self._rng = rng
        self.next_hello: float | None = None
        self.next_check: float | None = None
        self.reply_at: float | None = None
        #: Past this, we were not run when we should have been (see :meth:`pause_before`).
        self.paused_if_after = math.inf
        #: When the core last ran (the runtime called in).
        self.last_run = 0.0
        self._last_reply = -math.inf
        self._last_hello_at = -math.inf

    def start(self, now: float, *, first_check: float, hellos: bool) -> None:
        """Arm the check at ``first_check`` and, if we say hello, the beat."""
        self.last_run = now
        self.next_check = first_check
        if hellos:
            # A random phase, so nodes started together do not hello in lockstep forever.
            self.next_hello = now + self.hello_interval * self._rng.uniform(0.5, 1.0)
        self.watch()

    def stop(self) -> None:
        self.next_hello = self.next_check = self.reply_at = None

    def next_deadline(self, *others: float | None) -> float | None:
        """The earliest of our timers and ``others`` (``None``: unset), or ``None``."""
        best = math.inf
        for t in (self.next_hello, self.next_check, self.reply_at, *others):
            if t is not None and t < best:
                best = t
        return best if best != math.inf else None

    def hello_sent(self, now: float) -> None:
        self._last_hello_at = now

    def hello_due(self, now: float) -> bool:
        """Whether the beat is due; if so re-arm it, skipping missed beats rather than bursting after a stall."""
        due = self.next_hello
        if due is None or now < due:
            return False
        interval = self.hello_interval
        self.next_hello = due + interval * (int((now - due) // interval) + 1)
        self.reply_at = None  # this hello is the reply
        return True

    def reply_due(self, now: float) -> bool:
        if self.reply_at is None or now < self.reply_at:
            return False
        self.reply_at = None
        self._last_reply = now
        return True

    def check_due(self, now: float) -> bool:
        if self.next_check is None or now < self.next_check:
            return False
        self.next_check = now + self.check_interval
        return True

    def schedule_reply(self, now: float, *, just_started: bool, peers: int) -> None:
        """Answer a newcomer soon so it learns the cluster in milliseconds, not a hello interval.

        Replies are coalesced (one pending at a time), spread over a window that grows
        with the cluster (3 ms plus 0.5 ms per known node, at most a quarter hello interval), and
        at most one per window, so 200 nodes answering one newcomer cannot storm.  A
        peer that is not itself new (its ``seq`` is past its first packets) heard a
        hello from us within the window needs no answer: that is the newcomer's own
        view filling up, and replying would only echo.
        """
        if self.reply_at is not None:
            return
        window = min(self.hello_interval / 4, REPLY_WINDOW_BASE + REPLY_WINDOW_PER_PEER * peers)
        if not just_started and now - self._last_hello_at < window:
            return
        at = max(now + self._rng.uniform(0, window), self._last_reply + window)
        if self.next_hello is not None and at >= self.next_hello:
            return  # the regular hello comes first
        self.reply_at = at

    def watch(self) -> None:
        """A driver runs us by the next hello and check; a full hello interval later means we were not run."""
        due = min(t for t in (self.next_hello, self.next_check, math.inf) if t is not None)
        self.paused_if_after = due + self.hello_interval

    def pause_before(self, now: float) -> float:
        """Called past ``paused_if_after``: how long nothing ran before ``now``, if over a hello interval, else 0.

        Re-arms the watch (the run due now re-arms it properly).  A loop that is merely
        slow still ran; only a gap longer than a hello interval is a pause.
        """
        self.paused_if_after = now + self.hello_interval
        paused = now - self.last_run
        return paused if paused > self.hello_interval else 0.0
