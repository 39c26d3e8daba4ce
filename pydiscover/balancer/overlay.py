"""The run-time changes of a ResourceManager: one last-writer-wins entry per resource id.

An entry is ``(clock, origin, resource)``, ``resource`` ``None`` for a removal; on the
wire ``[id, clock, origin, resource or null]``.  ``(clock, origin)`` orders two changes
of one id and the higher wins, so merging is commutative, associative and idempotent (a
join-semilattice): every node can merge every change it hears, in any order, as often as
it arrives, and all end with the same overlay.  ``clock`` is a hybrid logical clock: a
node's next change is above every clock it has seen and at least the wall-clock
milliseconds its caller gave, so of two changes of one id the later one usually wins
even between nodes that never heard each other.  Pure: no I/O, no clock of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import wire

Resource = dict[str, Any]
#: An overlay entry: ``(clock, origin, resource)``, ``resource`` ``None`` for a removal.
Change = tuple[int, str, "Resource | None"]
#: The order of two changes of one id: ``(clock, origin)``.
Version = tuple[int, str]
#: Below every real version (an id the other side does not hold).
NO_VERSION: Version = (-1, "")


def version(change: Change) -> Version:
    return change[0], change[1]


def parse_entry(item: Any) -> tuple[str, Change] | None:
    """An entry from the wire, or ``None`` if it is malformed."""
    if not isinstance(item, list) or len(item) != 4:
        return None
    rid, clock, origin, resource = item
    if (not isinstance(rid, str) or not rid or type(clock) is not int or not 0 <= clock <= wire.MAX_SEQ
            or not isinstance(origin, str)):
        return None
    if resource is not None and (not isinstance(resource, dict) or resource.get("id") != rid):
        return None
    if resource is not None:
        try:  # it goes out again in the master's overlay: one that cannot (nested too deep) stays out
            wire.check_json(resource, "resource")
        except (TypeError, ValueError):
            return None
    return rid, (clock, origin, resource)


class Overlay:
    """The entries this node holds, the highest clock it has seen and a version that names its content."""

    __slots__ = ("_clock", "_entries", "version")

    def __init__(self) -> None:
        self._entries: dict[str, Change] = {}
        self._clock = 0
        #: Bumped at every change of the content (a master names the parts it cuts by it).
        self.version = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rid: object) -> bool:
        return rid in self._entries

    def get(self, rid: str) -> Change | None:
        return self._entries.get(rid)

    def items(self) -> Iterable[tuple[str, Change]]:
        return self._entries.items()

    def next_clock(self, stamp: int) -> int:
        """The clock of this node's next change: above every clock seen, at least ``stamp``."""
        return min(max(self._clock + 1, stamp), wire.MAX_SEQ)

    def merge(self, rid: str, change: Change) -> bool:
        """Take ``change`` if it is newer than the entry held for ``rid``; whether it was."""
        held = self._entries.get(rid)
        if held is not None and version(held) >= version(change):
            return False
        self._clock = max(self._clock, change[0])
        self._entries[rid] = change
        self.version += 1
        return True

    def wire(self, rids: Iterable[str]) -> list[list[Any]]:
        """The entries of ``rids`` (those held), as sent, sorted by id."""
        return [[rid, *self._entries[rid]] for rid in sorted(rids) if rid in self._entries]

    def lacking(self, shown: Mapping[str, Version]) -> set[str]:
        """The ids whose entry here is newer than what ``shown`` (another node's overlay) holds."""
        return {rid for rid, change in self._entries.items() if shown.get(rid, NO_VERSION) < version(change)}

    def apply(self, base: Mapping[str, Resource]) -> dict[str, Resource]:
        """``base`` with the overlay on top: an id the overlay names follows the overlay."""
        out = {rid: r for rid, r in base.items() if rid not in self._entries}
        out.update((rid, c[2]) for rid, c in self._entries.items() if c[2] is not None)
        return out


__all__ = ["NO_VERSION", "Change", "Overlay", "Version", "parse_entry", "version"]
