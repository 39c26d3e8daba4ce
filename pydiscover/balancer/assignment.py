"""Who owns which resource: balanced, sticky, deterministic.

``rebalance(previous, resources, members)`` keeps every resource where it is unless
its owner left or holds more than its quota, and places the rest by rendezvous
(highest-random-weight) hashing.  Quotas differ by at most one, so the spread is even
(max - min <= 1), and the number of moves is the minimum that spread allows: about
R/(N+1) on a join and the leaver's share on a leave.  Pure: no I/O, no clock.
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


def quotas(count: int, members: Sequence[str], load: Mapping[str, int]) -> dict[str, int]:
    """``count`` split as evenly as possible; the +1s go to members already holding most (fewer moves)."""
    if not members:
        return {}
    base, extra = divmod(count, len(members))
    order = sorted(members, key=lambda m: (-load.get(m, 0), _h(m), m))
    return {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}


def rebalance(
    previous: Mapping[str, str], resources: Iterable[str], members: Iterable[str]
) -> dict[str, str]:
    """The next assignment ``resource id -> member`` (empty if there are no members)."""
    ids = sorted(set(resources))
    team = sorted(set(members))
    if not team:
        return {}
    members_set = set(team)
    held: dict[str, list[str]] = {m: [] for m in team}
    for rid in ids:
        owner = previous.get(rid)
        if owner in members_set:
            held[owner].append(rid)
    quota = quotas(len(ids), team, {m: len(rs) for m, rs in held.items()})
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
