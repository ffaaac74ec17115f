"""Why a contact belongs to its customer: the chain of shared values from the primary.

Plain functions over identity.rules.Row; no Flask and no database.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from ..identity.rules import EMAIL, Row


@dataclass(frozen=True)
class Link:
    """One step of a chain: row ``from_id`` and row ``to_id`` both hold this value."""

    from_id: int
    to_id: int
    kind: str
    value: str


def _display(row: Row, kind: str) -> str:
    value = row.email if kind == EMAIL else row.phone
    return value if value is not None else ""


def link_chains(
    primary_id: int, rows: Sequence[Row], blocked: Collection[tuple[str, str]] = ()
) -> dict[int, list[Link] | None]:
    """For each other row, the shortest chain of shared values from the primary, or None.

    None means no chain of values joins the row to the primary any more (a
    manual merge, or the rows that bridged them were deleted). Among chains of
    equal length the one through older rows wins, so the answer is stable.
    A ``blocked`` (kind, key) links nothing, so no chain goes through it.
    """
    ordered = sorted(rows, key=lambda row: (row.created_at, row.id))
    holders: dict[tuple[str, str], list[Row]] = {}
    for row in ordered:
        for key in row.identifiers():
            if key not in blocked:
                holders.setdefault(key, []).append(row)
    by_id = {row.id: row for row in ordered}
    if primary_id not in by_id:
        raise ValueError(f"no row {primary_id} among the rows")

    came_from: dict[int, Link | None] = {primary_id: None}
    frontier = [by_id[primary_id]]
    # Level by level, each level oldest first, so ties go through the older row.
    while frontier:
        following: list[Row] = []
        for current in sorted(frontier, key=lambda row: (row.created_at, row.id)):
            for kind, key in sorted(current.identifiers()):
                # A value's holders are all reached the first time it is followed, so each
                # value is followed once: 40,000 rows sharing a phone went over that
                # phone's 40,000 holders from every one of them (37 s for the page).
                for neighbour in holders.pop((kind, key), ()):
                    if neighbour.id not in came_from:
                        came_from[neighbour.id] = Link(
                            current.id, neighbour.id, kind, _display(neighbour, kind)
                        )
                        following.append(neighbour)
        frontier = following

    chains: dict[int, list[Link] | None] = {}
    for row in ordered:
        if row.id == primary_id:
            continue
        if row.id not in came_from:
            chains[row.id] = None
            continue
        chain: list[Link] = []
        step = came_from[row.id]
        while step is not None:
            chain.append(step)
            step = came_from[step.from_id]
        chains[row.id] = chain[::-1]
    return chains
