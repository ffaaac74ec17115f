"""bonds found by key: bond_key rows, identify merges' evidence kept as bonds

Revision ID: 0009_bond_keys
Revises: 0008_name_grams
Create Date: 2026-11-30 04:30:00

Until now a bond was found through the contact row it was stored on, and an
identify merge's evidence was its merge row's request values; both went
astray once the customers split or the rows were deleted. Every bond now
lists its keys in ``bond_key``, identify merges' request values become bonds
(cause: what made identify merge), and keys that no live row holds any more
are withdrawn, as deleting a row now withdraws its values. The key parsing
below is frozen here, as the app parsed keys when this was written.
"""

import json
import re

import sqlalchemy as sa
from alembic import op

revision = "0009_bond_keys"
down_revision = "0008_name_grams"
branch_labels = None
depends_on = None

_bond = sa.table(
    "bond",
    sa.column("id"),
    sa.column("contact_id"),
    sa.column("detail"),
    sa.column("cause"),
    sa.column("actor"),
    sa.column("created_at"),
)
_bond_key = sa.table("bond_key", sa.column("bond_id"), sa.column("kind"), sa.column("key"))
_merge = sa.table(
    "merge",
    sa.column("id"),
    sa.column("survivor_id"),
    sa.column("cause"),
    sa.column("actor"),
    sa.column("detail"),
    sa.column("created_at"),
)
_contact = sa.table(
    "Contact", sa.column("email_key"), sa.column("phone_key"), sa.column("deletedAt")
)

_PHONE_SEPARATORS = re.compile(r"[\s\-.()\[\]]")
_PHONE_KEY = re.compile(r"\+?[0-9]{1,20}")
_BATCH = 5000


def _keys(detail):
    """The (kind, key) pairs of a stored detail: keys (bonds) or request values (merges)."""
    try:
        parsed = json.loads(detail or "")
    except ValueError:
        return set()
    if not isinstance(parsed, dict):
        return set()
    keys = set()
    for kind in ("email", "phone"):
        raw = parsed.get(kind)
        for item in raw if isinstance(raw, list) else [raw]:
            if not isinstance(item, str) or not item.strip():
                continue
            if kind == "email":
                keys.add((kind, item.strip().lower()))
            elif _PHONE_KEY.fullmatch(compact := _PHONE_SEPARATORS.sub("", item.strip())):
                keys.add((kind, compact))
    return keys


def _held(column, kind):
    return (
        sa.exists()
        .where(_contact.c.deletedAt.is_(None), column == _bond_key.c.key)
        .where(_bond_key.c.kind == kind)
    )


def upgrade():
    op.create_table(
        "bond_key",
        sa.Column("bond_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.ForeignKeyConstraint(["bond_id"], ["bond.id"], name=op.f("fk_bond_key_bond_id_bond")),
        sa.PrimaryKeyConstraint("bond_id", "kind", "key", name=op.f("pk_bond_key")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    op.create_index("ix_bond_key_kind_key", "bond_key", ["kind", "key"], unique=False)
    conn = op.get_bind()
    last = 0
    while True:
        merges = conn.execute(
            sa.select(_merge)
            .where(_merge.c.id > last, _merge.c.detail.is_not(None))
            .order_by(_merge.c.id)
            .limit(_BATCH)
        ).all()
        if not merges:
            break
        for merge in merges:
            keys = _keys(merge.detail)
            if keys:
                conn.execute(
                    _bond.insert().values(
                        contact_id=merge.survivor_id,
                        detail=json.dumps(
                            {
                                k: sorted(v for kind, v in keys if kind == k)
                                for k in ("email", "phone")
                            }
                        ),
                        cause=merge.cause,
                        actor=merge.actor or merge.cause,
                        created_at=merge.created_at,
                    )
                )
        last = merges[-1].id
    last = 0
    while True:
        bonds = conn.execute(
            sa.select(_bond.c.id, _bond.c.detail)
            .where(_bond.c.id > last)
            .order_by(_bond.c.id)
            .limit(_BATCH)
        ).all()
        if not bonds:
            break
        rows = [
            {"bond_id": bond.id, "kind": kind, "key": key}
            for bond in bonds
            for kind, key in sorted(_keys(bond.detail))
        ]
        if rows:
            conn.execute(_bond_key.insert(), rows)
        last = bonds[-1].id
    conn.execute(
        _bond_key.delete().where(
            ~_held(_contact.c.email_key, "email"), ~_held(_contact.c.phone_key, "phone")
        )
    )


def downgrade():
    op.drop_index("ix_bond_key_kind_key", table_name="bond_key")
    op.drop_table("bond_key")
    # Identify merges' evidence is read from their merge rows again.
    op.get_bind().execute(_bond.delete().where(_bond.c.cause.not_in(["link", "merge"])))
