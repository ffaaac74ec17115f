"""Engagement storage: events against contact rows, names customers gave, and screen-pops."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..models import MYSQL_TABLE_ARGS, Timestamp, utcnow

CHANNELS = ("call", "sms", "whatsapp", "email", "facebook", "web")
DIRECTIONS = ("inbound", "outbound")
WEB = "web"
CALL = "call"
# What the phone system may say of a call after it rang (POST /calls/status).
ANSWERED = "answered"
ENDED = "ended"
CALL_STATUSES = (ANSWERED, ENDED)

# Where a stored name came from: an event's payload, or an agent on the customer page.
NAME_FROM_EVENT = "event"
NAME_FROM_AGENT = "agent"


class Engagement(db.Model):
    """One contact with the business (a call, a message, a page view), never moved.

    It belongs to the contact row its identifiers resolved to; a customer's
    history is the union over the contact rows it holds now.
    """

    __tablename__ = "engagement"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("Contact.id"))
    channel: Mapped[str] = mapped_column(String(16))
    # None for web page views, which have no direction.
    direction: Mapped[str | None] = mapped_column(String(8))
    occurred_at: Mapped[datetime] = mapped_column(Timestamp)
    summary: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    # The channel's own id of the message or call: a retry carries the same one.
    external_id: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (
        # The timeline reads each contact row's newest events in (occurred_at, id)
        # order straight off these, channel filter or not; see docs/engagements.md.
        Index("ix_engagement_contact_time", "contact_id", "occurred_at", "id"),
        Index("ix_engagement_contact_channel_time", "contact_id", "channel", "occurred_at", "id"),
        UniqueConstraint("channel", "external_id"),
        MYSQL_TABLE_ARGS,
    )


NAME_KEY_LENGTH = 200


def name_key(name: str) -> str:
    """What search compares: the name lower-cased, cut to fit its column.

    Lower-casing can lengthen a name ("İ" becomes two characters), so a name of
    the longest length allowed would otherwise overflow the column on MySQL.
    """
    return name.lower()[:NAME_KEY_LENGTH]


class ContactName(db.Model):
    """A name a customer gave (with an event) or an agent set, kept against a contact row."""

    __tablename__ = "contact_name"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("Contact.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    # Lower-cased name, what search compares.
    name_key: Mapped[str] = mapped_column(String(NAME_KEY_LENGTH), index=True)
    source: Mapped[str] = mapped_column(String(16))
    # The agent's e-mail for names set on the customer page.
    actor: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow)

    __table_args__ = (MYSQL_TABLE_ARGS,)


class ScreenPop(db.Model):
    """An incoming call every open dashboard shows; agents poll for ids above their last one."""

    __tablename__ = "screen_pop"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    phone_number: Mapped[str] = mapped_column(String(64))
    phone_key: Mapped[str] = mapped_column(String(32))
    call_id: Mapped[str | None] = mapped_column(String(200))
    # The call recorded for a known caller; None until someone creates the customer.
    engagement_id: Mapped[int | None] = mapped_column(ForeignKey("engagement.id"))
    # A dashboard opening without a cursor asks for the calls still ringing.
    created_at: Mapped[datetime] = mapped_column(Timestamp, default=utcnow, index=True)
    # What the phone system said of the call since (POST /calls/status); None until it says.
    answered_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # The sign-in e-mail (as agents are stored) of the agent who took the call, if it said.
    answered_by: Mapped[str | None] = mapped_column(String(320))
    ended_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # The call's length as the phone system counted it, if it sent one with the end.
    duration_seconds: Mapped[int | None] = mapped_column(Integer)

    # A telephony webhook retried with the same call id pops once.
    __table_args__ = (UniqueConstraint("call_id"), MYSQL_TABLE_ARGS)


def call_duration(
    answered_at: datetime | None, ended_at: datetime | None, sent: int | None
) -> int | None:
    """The length of a call: ``sent`` (the phone system's own count) when it gave one, else
    the whole seconds from its answer to its end as they reached us; None when unknown."""
    if sent is not None:
        return sent
    if answered_at is None or ended_at is None:
        return None
    return max(0, int((ended_at - answered_at).total_seconds()))
