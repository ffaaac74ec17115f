"""voucher offers and vouchers

Revision ID: 0003_vouchers
Revises: 0002_shared
Create Date: 2026-11-23 13:10:00.000000

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "0003_vouchers"
down_revision = "0002_shared"
branch_labels = None
depends_on = None

MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _timestamp():
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def upgrade():
    op.create_table(
        "voucher_offer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("discount", sa.Integer(), nullable=False),
        sa.Column("once_per_customer", sa.Boolean(), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_voucher_offer")),
        sa.UniqueConstraint("name", name=op.f("uq_voucher_offer_name")),
        **MYSQL_TABLE,
    )
    op.create_table(
        "voucher",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=16), nullable=False),
        sa.Column("offer_id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("discount", sa.Integer(), nullable=False),
        sa.Column("expires_at", _timestamp(), nullable=False),
        sa.Column("issued_at", _timestamp(), nullable=False),
        sa.Column("issued_by", sa.String(length=320), nullable=False),
        sa.Column("used_at", _timestamp(), nullable=True),
        sa.Column("used_email", sa.String(length=320), nullable=True),
        sa.Column("voided_at", _timestamp(), nullable=True),
        sa.Column("voided_by", sa.String(length=320), nullable=True),
        sa.Column("void_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["Contact.id"], name=op.f("fk_voucher_contact_id_Contact")
        ),
        sa.ForeignKeyConstraint(
            ["offer_id"], ["voucher_offer.id"], name=op.f("fk_voucher_offer_id_voucher_offer")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_voucher")),
        sa.UniqueConstraint("code", name=op.f("uq_voucher_code")),
        **MYSQL_TABLE,
    )
    with op.batch_alter_table("voucher", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_voucher_contact_id"), ["contact_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_voucher_offer_id"), ["offer_id"], unique=False)


def downgrade():
    # The table's indexes go with it. Dropped first, MariaDB refused: its foreign keys need them.
    op.drop_table("voucher")
    op.drop_table("voucher_offer")
