"""node-discover's master election as one pure function.

A node promotes itself when fewer than ``masters_required`` live masters exist and no
eligible non-master outranks it; a master demotes itself when at least
``masters_required`` masters outrank it.  Rank is ``(weight, is node-discover,
id)`` (:attr:`Node.rank`): node-discover compares weights with a strict ``>``, so two
equal weights could both promote and stay masters forever.  The tie-breaks make the
order total, so every node with the same view reaches the same decision.  Masters are sticky: a higher-ranked newcomer
does not depose a live master.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from .node import Node


class Decision(Enum):
    STAY = "stay"
    PROMOTE = "promote"
    DEMOTE = "demote"


class Standing:
    """How the live peers stand against one node, as the election reads them: counts.

    Kept up to date as records come and go (:meth:`count`), so an election costs the
    same with 4,000 peers as with 4, where a pass over the peers made every newcomer
    cost O(peers): a flood of made-up instances then took a core's whole CPU.
    """

    __slots__ = ("higher_candidates", "higher_eligible", "higher_masters", "masters", "rank")

    def __init__(self, rank: tuple[float, int, str]) -> None:
        self.rank = rank
        self.masters = 0
        #: Masters that outrank us.
        self.higher_masters = 0
        #: Eligible non-masters that outrank us.
        self.higher_candidates = 0
        #: Eligible nodes (masters or not) that outrank us: the fenced election's question.
        self.higher_eligible = 0

    def count(self, node: Node, sign: int) -> None:
        """Add (``sign=1``) or withdraw (``-1``) a peer's record."""
        outranks = node.rank > self.rank
        if node.is_master:
            self.masters += sign
            if outranks:
                self.higher_masters += sign
        elif outranks and node.is_master_eligible:
            self.higher_candidates += sign
        if outranks and node.is_master_eligible:
            self.higher_eligible += sign

    def reset(self) -> None:
        self.masters = self.higher_masters = self.higher_candidates = self.higher_eligible = 0


def standing_of(my_rank: tuple[float, int, str], others: Iterable[Node]) -> Standing:
    """The :class:`Standing` of ``my_rank`` among ``others``, counted afresh."""
    standing = Standing(my_rank)
    for node in others:
        standing.count(node, 1)
    return standing


def decide(
    *,
    my_rank: tuple[float, int, str],
    i_am_master: bool,
    i_am_eligible: bool,
    others: Iterable[Node],
    masters_required: int,
) -> Decision:
    """What this node should do, given the live nodes it knows (``others`` excludes itself)."""
    return decide_standing(standing_of(my_rank, others), i_am_master=i_am_master, i_am_eligible=i_am_eligible,
                           masters_required=masters_required)


def decide_standing(standing: Standing, *, i_am_master: bool, i_am_eligible: bool, masters_required: int) -> Decision:
    """:func:`decide` from the counts alone."""
    if i_am_master:
        return Decision.DEMOTE if standing.higher_masters >= masters_required else Decision.STAY
    if i_am_eligible and standing.masters < masters_required and not standing.higher_candidates:
        return Decision.PROMOTE
    return Decision.STAY


def desired_master(
    *,
    my_rank: tuple[float, int, str],
    i_am_eligible: bool,
    others: Iterable[Node],
    masters_required: int,
) -> bool:
    """With a coordinator: whether this node is among the ``masters_required`` highest-ranked
    eligible live nodes (not sticky: the coordinator's leader keys, not the hellos, decide
    who holds mastership, so the order alone says who should)."""
    return desired_standing(standing_of(my_rank, others), i_am_eligible=i_am_eligible,
                            masters_required=masters_required)


def desired_standing(standing: Standing, *, i_am_eligible: bool, masters_required: int) -> bool:
    """:func:`desired_master` from the counts alone."""
    return i_am_eligible and standing.higher_eligible < masters_required
