"""Database models: contact rows, identifier claims and the merge history."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db

# Microsecond timestamps on MySQL/MariaDB too, so creation order survives.
Timestamp = DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
# Text that may outgrow MySQL's TEXT (64 KB): up to 16 MB there. SQLite's TEXT has no such
# limit. An audit state listing the 6,000 customers a block split off is about 120 KB.
LongText = Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")

# Binary collation: keys are compared exactly (they are normalised already),
# and utf8mb4 stores any e-mail address a customer can type.
MYSQL_TABLE_ARGS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}

PRIMARY = "primary"
SECONDARY = "secondary"

# The largest id a database integer holds (SQLite's 64-bit INTEGER); past it a
# query does not find nothing, it fails (OverflowError on SQLite).
MAX_ROW_ID = 2**63 - 1


def row_id(raw: str) -> int:
    """An id read from a request (0 included, for cursors); ValueError when out of range."""
    value = int(raw)
    if not 0 <= value <= MAX_ROW_ID:
        raise ValueError(f"{raw} is not an id")
    return value


def utcnow() -> datetime:
    """The current UTC time as a naive datetime, the form every column stores."""
    return datetime.now(UTC).replace(tzinfo=None)


class Contact(db.Model):
    """One row per identify call that brought something new; the task's columns kept."""

    __tablename__ = "Contact"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phoneNumber: Mapped[str | None] = mapped_column(String(64))
    email: Mapped[str | None] = mapped_column(String(320))
    linkedId: Mapped[int | None] = mapped_column(ForeignKey("Contact.id"))
    linkPrecedence: Mapped[str] = mapped_column(String(16), default=PRIMARY)
    createdAt: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updatedAt: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)
    deletedAt: Mapped[datetime | None] = mapped_column(Timestamp)
    # What matching compares: see identity.rules for the normalisation.
    email_key: Mapped[str | None] = mapped_column(String(320))
    phone_key: Mapped[str | None] = mapped_column(String(32))
    # Where the row came from: checkout, agent, import or event.
    source: Mapped[str] = mapped_column(String(16), default="checkout")

    __table_args__ = (
        Index("ix_Contact_email_key", "email_key"),
        Index("ix_Contact_phone_key", "phone_key"),
        Index("ix_Contact_linkedId", "linkedId"),
        MYSQL_TABLE_ARGS,
    )


class Identifier(db.Model):
    """One row per normalised e-mail or phone ever seen: the lock a writer takes.

    The unique (kind, key) pair is what stops two concurrent requests from
    both introducing the same value into two different customers.
    """

    __tablename__ = "identifier"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8))
    key: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # A blocked value (a shop's own phone, test@test.com) never links anything.
    blocked_at: Mapped[datetime | None] = mapped_column(Timestamp)
    blocked_reason: Mapped[str | None] = mapped_column(Text)
    blocked_by: Mapped[str | None] = mapped_column(String(320))

    __table_args__ = (
        UniqueConstraint("kind", "key"),
        # The blocked values page reads the few blocked values, latest first, off it. On
        # SQLite it holds those alone, so new identifiers (each checkout's) add nothing to it.
        Index(
            "ix_identifier_blocked_at",
            "blocked_at",
            sqlite_where=text("blocked_at IS NOT NULL"),
        ),
        MYSQL_TABLE_ARGS,
    )


class Merge(db.Model):
    """A customer absorbed into another: who survived, who was absorbed, and why."""

    __tablename__ = "merge"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    survivor_id: Mapped[int] = mapped_column(ForeignKey("Contact.id"), index=True)
    absorbed_id: Mapped[int] = mapped_column(ForeignKey("Contact.id"), index=True)
    rows_moved: Mapped[int] = mapped_column(Integer)
    # "identify", "event", "agent", ...: what caused the merge.
    cause: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str | None] = mapped_column(String(320))
    # The request values that bridged the two customers, as JSON.
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class Bond(db.Model):
    """Someone's word that some values belong to one person: evidence reconciliation keeps.

    Key connectivity alone cannot tell that an e-mail an agent added belongs
    to a customer holding none of its rows' values, or that two customers a
    checkout request bridged (adding no row) belong together; the statement
    is kept. Its keys are ``BondKey`` rows: reconciliation finds a bond
    through any of them and joins every live row holding one that is not
    blocked. ``detail`` is the statement as made, for people.
    """

    __tablename__ = "bond"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The customer (primary row) the statement was made about.
    contact_id: Mapped[int] = mapped_column(Integer, index=True)
    # {"email": [keys], "phone": [keys]} as JSON.
    detail: Mapped[str] = mapped_column(Text)
    # "link" or "merge" (agents), or what made identify merge ("checkout", "event", ...).
    cause: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class BondKey(db.Model):
    """One key a bond ties together; a key that no live row holds any more is withdrawn."""

    __tablename__ = "bond_key"

    bond_id: Mapped[int] = mapped_column(ForeignKey("bond.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    key: Mapped[str] = mapped_column(String(320), primary_key=True)

    __table_args__ = (Index("ix_bond_key_kind_key", "kind", "key"), MYSQL_TABLE_ARGS)


class User(db.Model):
    """A support agent who signs in to the dashboard."""

    __tablename__ = "user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # Sessions carry the value it had when they began; signing out raises it,
    # which ends every session of the agent, copies of the cookie included.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    __table_args__ = (MYSQL_TABLE_ARGS,)


class AuditEntry(db.Model):
    """One action on customer data: who, when, what, and the state before and after."""

    __tablename__ = "audit_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # The agent's e-mail, or "system" for background work.
    actor: Mapped[str] = mapped_column(String(320))
    # e.g. "merge", "block", "unblock", "delete", "link", "reconcile".
    action: Mapped[str] = mapped_column(String(32))
    # The customer (primary contact id) the action concerns, when there is one.
    customer_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # What the action was applied to, in words: "contact 12", "email x@y.z".
    subject: Mapped[str | None] = mapped_column(String(400))
    reason: Mapped[str | None] = mapped_column(Text)
    # JSON documents describing the state before and after.
    before: Mapped[str | None] = mapped_column(LongText)
    after: Mapped[str | None] = mapped_column(LongText)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    # The other customers its states name (see AuditCustomer), written with the entry.
    named_customers: Mapped[list[AuditCustomer]] = relationship()

    __table_args__ = (
        # The audit page filtered by action reads one action's newest entries off it,
        # and lists the actions there are by skipping from one to the next.
        Index("ix_audit_entry_action_created_at", "action", "created_at", "id"),
        MYSQL_TABLE_ARGS,
    )


class AuditCustomer(db.Model):
    """A customer an audit entry's before or after state names, besides its ``customer_id``.

    One entry tells of every customer an action touched: a block acted on
    customer 1 splits customers 2 and 3 off it, a merge absorbs the other
    side. This table lets the timeline of each of them find the entry.
    """

    __tablename__ = "audit_customer"

    customer_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    audit_entry_id: Mapped[int] = mapped_column(ForeignKey("audit_entry.id"), primary_key=True)

    __table_args__ = (MYSQL_TABLE_ARGS,)
