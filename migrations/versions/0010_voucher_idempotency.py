"""vouchers: the Idempotency-Key of the request that issued or redeemed each one

Revision ID: 0010_voucher_idempotency
Revises: 0009_bond_keys
Create Date: 2026-11-30 04:40:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0010_voucher_idempotency"
down_revision = "0009_bond_keys"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("voucher") as batch:
        batch.add_column(sa.Column("issue_key", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("redeem_key", sa.String(length=200), nullable=True))
    op.create_index("ix_voucher_issue_key", "voucher", ["issue_key"], unique=True)


def downgrade():
    op.drop_index("ix_voucher_issue_key", table_name="voucher")
    with op.batch_alter_table("voucher") as batch:
        batch.drop_column("redeem_key")
        batch.drop_column("issue_key")
