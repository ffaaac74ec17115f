"""engagements, contact names and screen-pops

Revision ID: 0006_engagements
Revises: 0002_shared
Create Date: 2026-11-23 13:05:00.000000

"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

# revision identifiers, used by Alembic.
revision = "0006_engagements"
down_revision = "0002_shared"
branch_labels = None
depends_on = None


def _timestamp():
    return (
        sa.DateTime()
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


MYSQL_TABLE = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def upgrade():
    op.create_table(
        "engagement",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("direction", sa.String(length=8), nullable=True),
        sa.Column("occurred_at", _timestamp(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("duration_seconds", sa.Integer(), nullable=True),
        sa.Column("external_id", sa.String(length=200), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["Contact.id"], name=op.f("fk_engagement_contact_id_Contact")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_engagement")),
        sa.UniqueConstraint(
            "channel", "external_id", name=op.f("uq_engagement_channel_external_id")
        ),
        **MYSQL_TABLE,
    )
    with op.batch_alter_table("engagement", schema=None) as batch_op:
        batch_op.create_index(
            "ix_engagement_contact_time", ["contact_id", "occurred_at", "id"], unique=False
        )
        batch_op.create_index(
            "ix_engagement_contact_channel_time",
            ["contact_id", "channel", "occurred_at", "id"],
            unique=False,
        )

    op.create_table(
        "contact_name",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("name_key", sa.String(length=200), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=320), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"], ["Contact.id"], name=op.f("fk_contact_name_contact_id_Contact")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_name")),
        **MYSQL_TABLE,
    )
    with op.batch_alter_table("contact_name", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_contact_name_contact_id"), ["contact_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_contact_name_name_key"), ["name_key"], unique=False)

    op.create_table(
        "screen_pop",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("phone_number", sa.String(length=64), nullable=False),
        sa.Column("phone_key", sa.String(length=32), nullable=False),
        sa.Column("call_id", sa.String(length=200), nullable=True),
        sa.Column("engagement_id", sa.Integer(), nullable=True),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.ForeignKeyConstraint(
            ["engagement_id"],
            ["engagement.id"],
            name=op.f("fk_screen_pop_engagement_id_engagement"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_screen_pop")),
        sa.UniqueConstraint("call_id", name=op.f("uq_screen_pop_call_id")),
        **MYSQL_TABLE,
    )
    with op.batch_alter_table("screen_pop", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_screen_pop_created_at"), ["created_at"], unique=False)


def downgrade():
    # Each table's indexes go with it. Dropped first, MariaDB refused: foreign keys need them.
    op.drop_table("screen_pop")
    op.drop_table("contact_name")
    op.drop_table("engagement")
