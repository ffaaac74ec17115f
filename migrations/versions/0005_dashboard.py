"""dashboard search index (contact_gram)

Revision ID: 0005_dashboard
Revises: 0002_shared
Create Date: 2026-11-23 13:10:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0005_dashboard"
down_revision = "0002_shared"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "contact_gram",
        sa.Column("gram", sa.String(length=4), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("gram", "contact_id", name=op.f("pk_contact_gram")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
        sqlite_with_rowid=False,
    )
    _index_existing_contacts()


def _grams(prefix, text):
    return {prefix + text[i : i + 3] for i in range(len(text) - 2)} if text else set()


def _index_existing_contacts():
    """Index the contacts already there, in batches (the same grams as dashboard.search)."""
    conn = op.get_bind()
    contact = sa.table("Contact", sa.column("id"), sa.column("email_key"), sa.column("phone_key"))
    gram = sa.table("contact_gram", sa.column("gram"), sa.column("contact_id"))
    last = 0
    while True:
        batch = conn.execute(
            sa.select(contact.c.id, contact.c.email_key, contact.c.phone_key)
            .where(contact.c.id > last)
            .order_by(contact.c.id)
            .limit(5000)
        ).all()
        if not batch:
            return
        rows = [
            {"gram": g, "contact_id": cid}
            for cid, email_key, phone_key in batch
            for g in _grams("e", email_key) | _grams("p", (phone_key or "").lstrip("+"))
        ]
        if rows:
            conn.execute(gram.insert(), rows)
        last = batch[-1][0]


def downgrade():
    op.drop_table("contact_gram")
