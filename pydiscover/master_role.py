"""This node's side of mastership: master or not, eligible or not, stepping down, settling.

The rule that picks masters is :func:`pydiscover.election.decide`; this unit keeps the
state it is applied to and the user's promote/demote on top.
"""

from __future__ import annotations

from collections.abc import Iterable

from .election import Decision, Standing, decide_standing, standing_of
from .node import Node


class MasterRole:
    """Whether we are master, and whether we stand for it."""

    __slots__ = (
        "_eligible",
        "_master_timeout",
        "_masters_required",
        "_rank",
        "is_master",
        "settle_at",
        "stepping_down_until",
    )

    def __init__(
        self, *, rank: tuple[float, int, str], eligible: bool, masters_required: int, master_timeout: float
    ) -> None:
        self._rank = rank
        self._eligible = eligible
        self._masters_required = masters_required
        self._master_timeout = master_timeout
        self.is_master = False
        #: While set, we advertise "not eligible" so the next-ranked node takes over.
        self.stepping_down_until: float | None = None
        #: No election before this: the cluster's hellos are still coming in.
        self.settle_at = 0.0

    @property
    def eligible(self) -> bool:
        """What our hellos say: a candidate, unless demoted for good or handing over."""
        return self._eligible and self.stepping_down_until is None

    def promote(self) -> bool:
        """Become master (and eligible again); ``True`` if we were not master."""
        self._eligible = True
        self.stepping_down_until = None
        was = self.is_master
        self.is_master = True
        return not was

    def make_eligible(self) -> None:
        """A candidate again (after a permanent demotion or during a hand-over), without becoming master."""
        self._eligible = True
        self.stepping_down_until = None

    def demote(self, now: float, *, permanent: bool) -> bool:
        """Step down, for good or for one ``master_timeout``; ``True`` if we were master."""
        if permanent:
            self._eligible = False
            self.stepping_down_until = None
        else:
            self.stepping_down_until = now + self._master_timeout
        return self.resign()

    def resign(self) -> bool:
        """No longer master (on stop); ``True`` if we were."""
        was = self.is_master
        self.is_master = False
        return was

    def step_down_over(self, now: float) -> bool:
        """Whether a hand-over with no successor ran out at ``now``: a normal candidate again."""
        if self.stepping_down_until is None or now < self.stepping_down_until:
            return False
        self.stepping_down_until = None
        return True

    def successor_seen(self) -> None:
        """A master appeared: the hand-over is done, be a normal candidate again."""
        self.stepping_down_until = None

    def elect(self, now: float, others: Iterable[Node] | Standing) -> Decision:
        """Apply the election rule to the live ``others`` (or their counts); nothing before ``settle_at``."""
        if now < self.settle_at:
            return Decision.STAY
        standing = others if isinstance(others, Standing) else standing_of(self._rank, others)
        decision = decide_standing(
            standing, i_am_master=self.is_master, i_am_eligible=self.eligible, masters_required=self._masters_required
        )
        if decision is Decision.PROMOTE:
            self.is_master = True
        elif decision is Decision.DEMOTE:
            self.is_master = False
        return decision
