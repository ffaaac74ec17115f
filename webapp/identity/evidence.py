"""Bonds: statements that values belong to one person, kept as evidence and found by key.

Identify writes one when a request merges customers (its values may be held
by no single row, so the rows alone would not keep them together); agents
write one when they link values to a customer or merge two. Reconciliation
(webapp/reconcile) joins every live row holding one of a bond's keys that is
not blocked.

A bond is found through any of its keys, wherever the rows holding them sit
now: after a split the bond still reaches every part it joins. And a key
whose last live holder is deleted is withdrawn from every bond: a later row
holding that value is new to identify (no live row shares it), so it must be
new to reconciliation too, or a whole-database run would merge what identify
kept apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import Connection, delete, insert, select

from ..database import chunks
from ..models import Bond, BondKey, Contact, utcnow
from .rules import EMAIL, Key, keys_detail

_k = BondKey.__table__.c
_c = Contact.__table__.c


def add_bond(
    conn: Connection, keys: Iterable[Key], *, contact_id: int, cause: str, actor: str
) -> None:
    """Keep the word of ``actor`` that ``keys`` belong to one person (customer ``contact_id``)."""
    keys = set(keys)
    bond_id = conn.execute(
        insert(Bond.__table__).values(
            contact_id=contact_id,
            detail=json.dumps(keys_detail(keys)),
            cause=cause,
            actor=actor,
            created_at=utcnow(),
        )
    ).inserted_primary_key[0]
    conn.execute(
        insert(BondKey.__table__),
        [{"bond_id": bond_id, "kind": kind, "key": key} for kind, key in sorted(keys)],
    )


def bonds_holding(conn: Connection, keys: Iterable[Key]) -> list[frozenset[Key]]:
    """Every bond with one of ``keys``, as the set of keys it ties together."""
    bond_ids: set[int] = set()
    for kind, wanted in keys_detail(keys).items():
        for part in chunks(wanted):
            statement = select(_k.bond_id).where(_k.kind == kind, _k.key.in_(part))
            bond_ids.update(conn.execute(statement).scalars())
    members: dict[int, set[Key]] = {}
    for part in chunks(sorted(bond_ids)):
        statement = select(_k.bond_id, _k.kind, _k.key).where(_k.bond_id.in_(part))
        for bond_id, kind, key in conn.execute(statement):
            members.setdefault(bond_id, set()).add((kind, key))
    return [frozenset(found) for _, found in sorted(members.items())]


def withdraw_unheld(conn: Connection, keys: Iterable[Key]) -> None:
    """Take out of every bond the ones of ``keys`` that no live row holds any more."""
    keys = set(keys)
    held: set[Key] = set()
    for kind, wanted in keys_detail(keys).items():
        column = _c.email_key if kind == EMAIL else _c.phone_key
        for part in chunks(wanted):
            statement = select(column).where(column.in_(part), _c.deletedAt.is_(None))
            held.update((kind, key) for key in conn.execute(statement).scalars())
    for kind, wanted in keys_detail(keys - held).items():
        for part in chunks(wanted):
            conn.execute(delete(BondKey.__table__).where(_k.kind == kind, _k.key.in_(part)))
