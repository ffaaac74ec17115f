"""search index entries for the names already kept (contact_gram kind "n")

Revision ID: 0008_name_grams
Revises: 0007_merge
Create Date: 2026-11-23 14:35:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0008_name_grams"
down_revision = "0007_merge"
branch_labels = None
depends_on = None

_contact_name = sa.table("contact_name", sa.column("contact_id"), sa.column("name_key"))
_gram = sa.table("contact_gram", sa.column("gram"), sa.column("contact_id"))
# Every "n" gram sorts between these (binary collation on both databases).
_NAME_GRAMS = sa.and_(_gram.c.gram >= "n", _gram.c.gram < "o")


def _grams(prefix, text):
    return {prefix + text[i : i + 3] for i in range(len(text) - 2)} if text else set()


def upgrade():
    """Index every name, a batch of contact rows at a time (the grams webapp.identity computes)."""
    conn = op.get_bind()
    # Entries a newer app may already have written are rebuilt with the rest.
    conn.execute(_gram.delete().where(_NAME_GRAMS))
    last = 0
    while True:
        contact_ids = list(
            conn.execute(
                sa.select(_contact_name.c.contact_id)
                .where(_contact_name.c.contact_id > last)
                .group_by(_contact_name.c.contact_id)
                .order_by(_contact_name.c.contact_id)
                .limit(5000)
            ).scalars()
        )
        if not contact_ids:
            return
        names = conn.execute(
            sa.select(_contact_name.c.contact_id, _contact_name.c.name_key).where(
                _contact_name.c.contact_id.in_(contact_ids)
            )
        )
        # A row's names may share grams; the index holds each (gram, row) once.
        entries = {(g, contact_id) for contact_id, key in names for g in _grams("n", key)}
        if entries:
            conn.execute(
                _gram.insert(), [{"gram": g, "contact_id": cid} for g, cid in sorted(entries)]
            )
        last = contact_ids[-1]


def downgrade():
    op.get_bind().execute(_gram.delete().where(_NAME_GRAMS))
