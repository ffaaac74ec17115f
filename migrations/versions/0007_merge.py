"""merge the feature branches

Revision ID: 0007_merge
Revises: 0003_vouchers, 0004_reconcile, 0005_dashboard, 0006_engagements
Create Date: 2026-11-23 14:20:29.265384

"""

# revision identifiers, used by Alembic.
revision = "0007_merge"
down_revision = ("0003_vouchers", "0004_reconcile", "0005_dashboard", "0006_engagements")
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
