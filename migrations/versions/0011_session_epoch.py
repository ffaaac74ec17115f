"""agents: a session epoch, raised on sign-out to end every session of the agent

Revision ID: 0011_session_epoch
Revises: 0010_voucher_idempotency
Create Date: 2026-11-30 07:20:00

"""

import sqlalchemy as sa
from alembic import op

revision = "0011_session_epoch"
down_revision = "0010_voucher_idempotency"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("user") as batch:
        batch.add_column(
            sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade():
    with op.batch_alter_table("user") as batch:
        batch.drop_column("session_epoch")
