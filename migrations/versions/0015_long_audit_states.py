"""audit: before/after states up to 16 MB on MySQL/MariaDB (MEDIUMTEXT), not 64 KB (TEXT)

Revision ID: 0015_long_audit_states
Revises: 0014_audit_customers
Create Date: 2026-12-01 11:30:00

A block, unblock or re-run lists every customer it touched in its audit
entry's states. On MySQL/MariaDB the states were TEXT, at most 64 KB: blocking
a junk phone that a few thousand rows shared wrote a longer state, the
database refused it ("Data too long"), and the block itself failed with it.
SQLite's TEXT has no such limit, so nothing changes there.

The downgrade leaves the columns as they are: a shorter column would refuse
the states already longer than 64 KB, and the older code reads MEDIUMTEXT as
it reads TEXT.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0015_long_audit_states"
down_revision = "0014_audit_customers"
branch_labels = None
depends_on = None


def upgrade():
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for column in ("before", "after"):
        op.alter_column(
            "audit_entry",
            column,
            existing_type=sa.Text(),
            type_=mysql.MEDIUMTEXT(),
            existing_nullable=True,
        )


def downgrade():
    pass
