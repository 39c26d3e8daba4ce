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


def decide(
    *,
    my_rank: tuple[float, int, str],
    i_am_master: bool,
    i_am_eligible: bool,
    others: Iterable[Node],
    masters_required: int,
) -> Decision:
    """What this node should do, given the live nodes it knows (``others`` excludes itself)."""
    masters = 0
    higher_masters = 0
    higher_candidate = False
    for node in others:
        outranks = node.rank > my_rank
        if node.is_master:
            masters += 1
            higher_masters += outranks
        elif outranks and node.is_master_eligible:
            higher_candidate = True
    if i_am_master:
        return Decision.DEMOTE if higher_masters >= masters_required else Decision.STAY
    if i_am_eligible and masters < masters_required and not higher_candidate:
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
    if not i_am_eligible:
        return False
    higher = sum(1 for node in others if node.is_master_eligible and node.rank > my_rank)
    return higher < masters_required
