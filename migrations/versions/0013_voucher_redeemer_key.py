"""vouchers: the redeeming e-mail's matching key, so once-per-customer follows the redeemer

Revision ID: 0013_voucher_redeemer_key
Revises: 0012_composed_email_keys
Create Date: 2026-11-30 15:25:00

A once-per-customer offer counted a redemption only for the customer of the
row the voucher was issued to. Someone who redeemed another person's voucher
while the two were one customer could, once a block split them, redeem the
offer again. The redemption now also counts for the customer holding the
e-mail it was made with: ``used_email_key``, filled here for the vouchers
already redeemed. The key function is frozen here, as 0012 derives keys.
"""

import unicodedata

import sqlalchemy as sa
from alembic import op
from email_validator import EmailNotValidError, validate_email

revision = "0013_voucher_redeemer_key"
down_revision = "0012_composed_email_keys"
branch_labels = None
depends_on = None

_voucher = sa.table(
    "voucher", sa.column("id"), sa.column("used_email"), sa.column("used_email_key")
)
_BATCH = 5000


def _key(address: str) -> str:
    """The matching key of an address as stored (trimmed, as sent)."""
    try:
        normalized = validate_email(address.strip(), check_deliverability=False).normalized
    except EmailNotValidError:
        normalized = address.strip()
    lowered = normalized.lower()
    return lowered if lowered.isascii() else unicodedata.normalize("NFC", lowered)


def upgrade():
    with op.batch_alter_table("voucher") as batch:
        batch.add_column(sa.Column("used_email_key", sa.String(length=320), nullable=True))
        batch.create_index(
            "ix_voucher_offer_used_email_key", ["offer_id", "used_email_key"], unique=False
        )
    conn = op.get_bind()
    v = _voucher.c
    after = 0
    while True:
        batch = conn.execute(
            sa.select(v.id, v.used_email)
            .where(v.id > after, v.used_email.is_not(None))
            .order_by(v.id)
            .limit(_BATCH)
        ).all()
        if not batch:
            return
        after = batch[-1].id
        for voucher_id, used_email in batch:
            conn.execute(
                sa.update(_voucher)
                .where(v.id == voucher_id)
                .values(used_email_key=_key(used_email))
            )


def downgrade():
    with op.batch_alter_table("voucher") as batch:
        batch.drop_index("ix_voucher_offer_used_email_key")
        batch.drop_column("used_email_key")
