"""screen_pop: when the call was answered (and by which agent), when it ended, its length

Revision ID: 0019_call_status
Revises: 0018_partial_blocked_index
Create Date: 2026-12-02 09:00:00

POST /calls/status tells the service that a call was answered or ended, so
that its pop leaves the screens of agents who did not take it. Four nullable
columns on ``screen_pop``; no row is rewritten, and a worker of the previous
version goes on working beside them (it neither reads nor writes them).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0019_call_status"
down_revision = "0018_partial_blocked_index"
branch_labels = None
depends_on = None


def _timestamp():
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def upgrade():
    with op.batch_alter_table("screen_pop") as batch:
        batch.add_column(sa.Column("answered_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("answered_by", sa.String(length=320), nullable=True))
        batch.add_column(sa.Column("ended_at", _timestamp(), nullable=True))
        batch.add_column(sa.Column("duration_seconds", sa.Integer(), nullable=True))


def downgrade():
    with op.batch_alter_table("screen_pop") as batch:
        batch.drop_column("duration_seconds")
        batch.drop_column("ended_at")
        batch.drop_column("answered_by")
        batch.drop_column("answered_at")
