"""Who owns which resource: balanced in proportion to capacity, sticky, deterministic.

``rebalance(previous, resources, members, capacity)`` keeps every resource where it is
unless its owner left or holds more than its quota, and places the rest by rendezvous
(highest-random-weight) hashing.  A member's quota is its exact share
``R * capacity / total capacity`` rounded down or up to a whole resource (the ups go
first to members that already hold more than the rounded-down share, so fewer move);
with equal capacities quotas differ by at most one (max - min <= 1).  The number of
moves is the minimum those quotas allow: about R/(N+1) on a join (all to the newcomer),
the leaver's share on a leave, and on a capacity change only what the new quotas shed.
A member of capacity 0 gets nothing.  Pure: no I/O, no clock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence


def _digest(data: bytes) -> int:
    """The balancer's one hash: 64 bits of BLAKE2b."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def rendezvous(key: bytes, member: str) -> int:
    """Rendezvous (highest random weight) score of ``member`` for ``key``: the one hash of the balancer.

    A key goes to its highest-scoring member, so when a member leaves only its keys move,
    spread over the others.  Used for resources (ids) and for tasks' ``hash`` strategy.
    """
    return _digest(key + b"\x1f" + member.encode())


def _h(name: str) -> int:
    """A fixed pseudo-random order of names (ties and placement order), from the same hash."""
    return _digest(name.encode())


def score(resource: str, member: str) -> int:
    """Rendezvous score: each resource's preference order over members, stable as members change."""
    return rendezvous(resource.encode(), member)


def quotas(count: int, members: Sequence[str], load: Mapping[str, int],
           capacity: Mapping[str, int] | None = None) -> dict[str, int]:
    """``count`` split in proportion to ``capacity`` (1 for a member it does not name), in whole resources.

    Each member gets its exact share ``count * c / C`` rounded down, or up: the ups
    (as many as the rounding-down left over) go to members whose share is not whole,
    first to those already holding more than the rounded-down share (``load``: fewer
    moves), then to the largest fractions, then in a fixed pseudo-random order.  With
    equal capacities: ``count // N`` each, the +1s to the members holding most.
    """
    caps = {m: _capacity(capacity, m) for m in members}
    total = sum(caps.values())
    if not members or total == 0:
        return dict.fromkeys(members, 0)
    out = {m: count * caps[m] // total for m in members}
    fraction = {m: count * caps[m] % total for m in members}  # numerators over ``total``
    extra = count - sum(out.values())  # < the number of members with a fraction (they sum to it)
    order = sorted((m for m in members if fraction[m]),
                   key=lambda m: (load.get(m, 0) <= out[m], -fraction[m], -load.get(m, 0), _h(m), m))
    for m in order[:extra]:
        out[m] += 1
    return out


def _capacity(capacity: Mapping[str, int] | None, member: str) -> int:
    return 1 if capacity is None else max(0, int(capacity.get(member, 1)))


def rebalance(
    previous: Mapping[str, str], resources: Iterable[str], members: Iterable[str],
    capacity: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """The next assignment ``resource id -> member`` (empty if no member has capacity).

    ``capacity``: member -> relative capacity (an int >= 0; 1 for a member it does not
    name); members of capacity 0 get nothing.
    """
    ids = sorted(set(resources))
    team = sorted(m for m in set(members) if _capacity(capacity, m) > 0)
    if not team:
        return {}
    members_set = set(team)
    held: dict[str, list[str]] = {m: [] for m in team}
    for rid in ids:
        owner = previous.get(rid)
        if owner in members_set:
            held[owner].append(rid)
    quota = quotas(len(ids), team, {m: len(rs) for m, rs in held.items()}, capacity)
    out: dict[str, str] = {}
    load = dict.fromkeys(team, 0)
    for member, rids in held.items():
        # over quota: keep the resources that prefer this member most, shed the rest
        keep = sorted(rids, key=lambda r: (-score(r, member), r))[: quota[member]]
        for rid in keep:
            out[rid] = member
        load[member] = len(keep)
    for rid in sorted((r for r in ids if r not in out), key=lambda r: (_h(r), r)):
        candidates = [m for m in team if load[m] < quota[m]]
        best = max(candidates, key=lambda m: (score(rid, m), m))
        out[rid] = best
        load[best] += 1
    return out


def moved(before: Mapping[str, str], after: Mapping[str, str]) -> int:
    """How many resources changed owner (resources present in both)."""
    return sum(1 for rid, owner in after.items() if rid in before and before[rid] != owner)
