"""The customer's activity: engagements interleaved with contact and merge history, paged.

Engagements are read a page at a time by keyset on (occurred_at, id); the
contact, merge and audit history (a handful of rows per customer) is merged
into the time window each page covers. Consecutive page views less than 30
minutes apart read as one visit that expands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..dashboard.cursors import decode_cursor
from ..dashboard.cursors import encode_cursor as keyset_cursor
from ..dashboard.customers import CustomerView, TimelineEvent, load_customer
from ..extensions import db
from ..identity.service import customer_rows
from .history import EngagementItem, engagement_page
from .models import WEB

PAGE_SIZE = 30
VISIT_GAP = timedelta(minutes=30)
# A visit longer than this is cut into several entries, so a page stays bounded.
MAX_VISIT_VIEWS = 500
_EXTEND_BATCH = 100


@dataclass
class ActivityEntry:
    """One line of the activity: an engagement, a visit (page views) or a history event."""

    at: datetime
    engagement: EngagementItem | None = None
    visit: list[EngagementItem] = field(default_factory=list)
    history: TimelineEvent | None = None

    @property
    def kind(self) -> str:
        """'engagement', 'visit' or 'history'."""
        if self.history is not None:
            return "history"
        return "visit" if self.visit else "engagement"

    @property
    def visit_started(self) -> datetime | None:
        return self.visit[-1].occurred_at if self.visit else None


@dataclass
class ActivityPage:
    """A page of a customer's activity, newest first, and the cursor of the next page."""

    primary_id: int
    channel: str | None
    entries: list[ActivityEntry]
    next_cursor: str | None


def encode_cursor(item: EngagementItem) -> str:
    """The ``before`` value that continues after ``item``."""
    return keyset_cursor(item.occurred_at, item.id)


def _same_visit(newer: EngagementItem, older: EngagementItem) -> bool:
    return (
        newer.channel == WEB
        and older.channel == WEB
        and newer.occurred_at - older.occurred_at < VISIT_GAP
    )


def _complete_visit(conn, ids: list[int], channel: str | None, items: list[EngagementItem]) -> bool:
    """Extend a page ending inside a visit with the rest of that visit (up to a cap).

    Appends to ``items``; returns whether older engagements remain after them.
    """
    run = 1
    while run < len(items) and _same_visit(items[-run - 1], items[-run]):
        run += 1
    while run < MAX_VISIT_VIEWS:
        last = items[-1]
        wanted = min(_EXTEND_BATCH, MAX_VISIT_VIEWS - run)
        more = engagement_page(
            conn, ids, channel=channel, before=(last.occurred_at, last.id), limit=wanted
        )
        for item in more:
            if not _same_visit(items[-1], item):
                return True
            items.append(item)
            run += 1
        if len(more) < wanted:
            return False
    return True


def _group(items: list[EngagementItem]) -> list[ActivityEntry]:
    entries: list[ActivityEntry] = []
    for item in items:
        previous = entries[-1] if entries else None
        if item.channel == WEB:
            joins = (
                previous is not None
                and previous.visit
                and len(previous.visit) < MAX_VISIT_VIEWS
                and _same_visit(previous.visit[-1], item)
            )
            if joins:
                previous.visit.append(item)
            else:
                entries.append(ActivityEntry(at=item.occurred_at, visit=[item]))
        else:
            entries.append(ActivityEntry(at=item.occurred_at, engagement=item))
    return entries


def customer_activity(
    primary_id: int,
    *,
    channel: str | None = None,
    before: str | None = None,
    customer: CustomerView | None = None,
) -> ActivityPage | None:
    """A page of the activity of a live primary; None when ``primary_id`` is not one.

    ``customer`` is the customer page's own CustomerView when there is one: its
    history and contact rows are used instead of reading them again.
    """
    cursor = decode_cursor(before) if before else None
    if customer is None and channel is None:
        customer = load_customer(primary_id)
        if customer is None:
            return None
    history: list[TimelineEvent] = customer.timeline if customer and channel is None else []
    conn = db.session.connection()
    if customer is not None:
        ids = [contact.id for contact in customer.contacts if contact.deleted_at is None]
    else:
        rows = customer_rows(conn, primary_id)
        if not any(row.id == primary_id and row.is_primary for row in rows):
            db.session.rollback()
            return None
        ids = [row.id for row in rows]
    items = engagement_page(conn, ids, channel=channel, before=cursor, limit=PAGE_SIZE + 1)
    has_more = len(items) > PAGE_SIZE
    items = items[:PAGE_SIZE]
    if has_more and items[-1].channel == WEB:
        has_more = _complete_visit(conn, ids, channel, items)
    db.session.rollback()

    entries = _group(items)
    # History belongs to this page when it falls between the cursor and the oldest item.
    upper = cursor[0] if cursor else None
    lower = items[-1].occurred_at if has_more else None
    for event in history:
        if (upper is None or event.at < upper) and (lower is None or event.at >= lower):
            entries.append(ActivityEntry(at=event.at, history=event))
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return ActivityPage(
        primary_id=primary_id,
        channel=channel,
        entries=entries,
        next_cursor=encode_cursor(items[-1]) if has_more else None,
    )
