"""audit: every customer an entry's before/after states name, so each one's timeline shows it

Revision ID: 0014_audit_customers
Revises: 0013_voucher_redeemer_key
Create Date: 2026-12-01 03:00:00

A block, unblock, delete, link, merge or re-run writes one audit entry, under
the customer it was acted on; its states list every customer it touched. The
timeline of a customer split off by a block, or absorbed by a merge, found
the entry only by ``customer_id`` and so never showed it. ``audit_customer``
keeps the other customers each entry names, filled here for the entries
already written.

It also rewrites the discount of the ``issue_voucher`` entries already
written: they hold the voucher column's hundredths of a percent (1250 for
12.5%), which the audit page now shows as written ("discount: 1250%"); this
version records the percent. An entry is rewritten only when its number is
its voucher's hundredths, so an entry already in percent (written by this
version, before a downgrade and upgrade again) is left as it is.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0014_audit_customers"
down_revision = "0013_voucher_redeemer_key"
branch_labels = None
depends_on = None

_entry = sa.table(
    "audit_entry",
    sa.column("id"),
    sa.column("action"),
    sa.column("subject"),
    sa.column("customer_id"),
    sa.column("before"),
    sa.column("after"),
)
_named = sa.table("audit_customer", sa.column("customer_id"), sa.column("audit_entry_id"))
_voucher = sa.table("voucher", sa.column("code"), sa.column("discount"))
_BATCH = 5000


def _customers(entry) -> set[int]:
    """The primary ids under "customers" in the entry's states, as 0014's app wrote them."""
    named: set[int] = set()
    for stored in (entry.before, entry.after):
        try:
            state = json.loads(stored) if stored else None
        except ValueError:
            continue
        customers = state.get("customers") if isinstance(state, dict) else None
        if isinstance(customers, dict):
            named.update(int(k) for k in customers if str(k).isascii() and str(k).isdigit())
    named.discard(entry.customer_id)
    return named


def upgrade():
    op.create_table(
        "audit_customer",
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("audit_entry_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_entry_id"],
            ["audit_entry.id"],
            name=op.f("fk_audit_customer_audit_entry_id_audit_entry"),
        ),
        sa.PrimaryKeyConstraint("customer_id", "audit_entry_id", name=op.f("pk_audit_customer")),
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )
    conn = op.get_bind()
    e = _entry.c
    for batch in _batches(conn, sa.select(e.id, e.customer_id, e.before, e.after)):
        rows = [
            {"customer_id": customer, "audit_entry_id": entry.id}
            for entry in batch
            for customer in sorted(_customers(entry))
        ]
        if rows:
            conn.execute(sa.insert(_named), rows)
    _percent_discounts(conn)


def _batches(conn, query):
    """The audit entries ``query`` selects (``id`` among its columns), _BATCH at a time by id."""
    after = 0
    while True:
        batch = conn.execute(
            query.where(_entry.c.id > after).order_by(_entry.c.id).limit(_BATCH)
        ).all()
        if not batch:
            return
        after = batch[-1].id
        yield batch


def _percent_discounts(conn) -> None:
    """``issue_voucher`` entries' discount from hundredths of a percent to the percent."""
    e = _entry.c
    vouchers = sa.select(e.id, e.subject, e.after).where(e.action == "issue_voucher")
    for batch in _batches(conn, vouchers):
        for entry in batch:
            try:
                state = json.loads(entry.after) if entry.after else None
            except ValueError:
                continue
            hundredths = state.get("discount") if isinstance(state, dict) else None
            if not isinstance(hundredths, int) or isinstance(hundredths, bool):
                continue
            # The subject is "voucher K7QM-3XPD-9R"; the code is stored without dashes.
            code = (entry.subject or "").removeprefix("voucher ").replace("-", "")
            stored = conn.execute(
                sa.select(_voucher.c.discount).where(_voucher.c.code == code)
            ).scalar()
            if stored != hundredths:
                continue
            whole, rest = divmod(hundredths, 100)
            state["discount"] = whole if rest == 0 else hundredths / 100
            text = json.dumps(state, default=str, sort_keys=True, ensure_ascii=False)
            conn.execute(sa.update(_entry).where(e.id == entry.id).values(after=text))


def downgrade():
    op.drop_table("audit_customer")
