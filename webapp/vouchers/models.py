"""Voucher tables: offers and the vouchers issued from them."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..models import MYSQL_TABLE_ARGS, Timestamp, utcnow


class Offer(db.Model):
    """A named special offer with its current discount; vouchers copy it when issued."""

    __tablename__ = "voucher_offer"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    # Hundredths of a percent (1250 = 12.5 %): exact on every database.
    discount: Mapped[int] = mapped_column(Integer)
    # At most one redemption per customer, across all its e-mails and vouchers.
    once_per_customer: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, onupdate=utcnow)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class Voucher(db.Model):
    """One code handed to a customer; it keeps the discount it was issued with."""

    __tablename__ = "voucher"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Canonical form: capitals and digits, no separators (see vouchers.rules).
    code: Mapped[str] = mapped_column(String(16), unique=True)
    offer_id: Mapped[int] = mapped_column(ForeignKey("voucher_offer.id"), index=True)
    # The contact row the issuing e-mail resolved to; the owner is that row's
    # customer as it is now (its primary through linkedId), so merges and
    # splits move the voucher with the row.
    contact_id: Mapped[int] = mapped_column(ForeignKey("Contact.id"), index=True)
    discount: Mapped[int] = mapped_column(Integer)
    expires_at: Mapped[datetime] = mapped_column(Timestamp)
    issued_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)
    # "api", "cli" or the agent's e-mail.
    issued_by: Mapped[str] = mapped_column(String(320))
    used_at: Mapped[datetime | None] = mapped_column(Timestamp)
    used_email: Mapped[str | None] = mapped_column(String(320))
    # Its matching key: a once-per-customer offer counts the redemption for the
    # customer holding that e-mail, wherever merges and splits take it.
    used_email_key: Mapped[str | None] = mapped_column(String(320))
    voided_at: Mapped[datetime | None] = mapped_column(Timestamp)
    voided_by: Mapped[str | None] = mapped_column(String(320))
    void_reason: Mapped[str | None] = mapped_column(Text)
    # The client's Idempotency-Key of the request that issued it / redeemed it:
    # the same request sent again gets the same answer, not a second voucher
    # or a 409 for its own redemption.
    issue_key: Mapped[str | None] = mapped_column(String(200))
    redeem_key: Mapped[str | None] = mapped_column(String(200))

    __table_args__ = (
        Index("ix_voucher_issue_key", "issue_key", unique=True),
        Index("ix_voucher_offer_used_email_key", "offer_id", "used_email_key"),
        MYSQL_TABLE_ARGS,
    )
