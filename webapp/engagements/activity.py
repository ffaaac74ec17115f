"""The customer's activity: its engagements across channels, newest first, paged.

Engagements are read a page at a time by keyset on (occurred_at, id), from
every contact row of the customer, deleted rows included (their events are
marked). Consecutive page views less than 30 minutes apart read as one visit
that expands. Contact rows, merges and audit entries are the dashboard
timeline's, not repeated here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..dashboard.cursors import decode_cursor
from ..dashboard.cursors import encode_cursor as keyset_cursor
from ..dashboard.customers import CustomerView
from ..extensions import db
from .history import EngagementItem, engagement_page, history_rows
from .models import WEB

PAGE_SIZE = 30
VISIT_GAP = timedelta(minutes=30)
# A visit longer than this is cut into several entries, so a page stays bounded.
MAX_VISIT_VIEWS = 500
_EXTEND_BATCH = 100


@dataclass
class ActivityEntry:
    """One line of the activity: an engagement, or a visit (consecutive page views)."""

    at: datetime
    engagement: EngagementItem | None = None
    visit: list[EngagementItem] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """'engagement' or 'visit'."""
        return "visit" if self.visit else "engagement"

    @property
    def visit_started(self) -> datetime | None:
        return self.visit[-1].occurred_at if self.visit else None

    @property
    def deleted_contacts(self) -> list[int]:
        """The since-deleted contact rows this entry was recorded on."""
        items = self.visit or [self.engagement]
        return sorted({item.contact_id for item in items if item and item.contact_deleted})


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


def _complete_visit(
    conn, ids: list[int], deleted: set[int], channel: str | None, items: list[EngagementItem]
) -> bool:
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
            conn,
            ids,
            channel=channel,
            before=(last.occurred_at, last.id),
            limit=wanted,
            deleted=deleted,
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
    contact rows are used instead of reading them again.
    """
    cursor = decode_cursor(before) if before else None
    conn = db.session.connection()
    if customer is not None:
        ids = [contact.id for contact in customer.contacts]
        deleted = {contact.id for contact in customer.contacts if contact.deleted_at is not None}
    else:
        rows = history_rows(conn, primary_id)
        if rows is None:
            db.session.rollback()
            return None
        ids, deleted = rows.ids, set(rows.deleted_ids)
    items = engagement_page(
        conn, ids, channel=channel, before=cursor, limit=PAGE_SIZE + 1, deleted=deleted
    )
    has_more = len(items) > PAGE_SIZE
    items = items[:PAGE_SIZE]
    if has_more and items[-1].channel == WEB:
        has_more = _complete_visit(conn, ids, deleted, channel, items)
    db.session.rollback()
    return ActivityPage(
        primary_id=primary_id,
        channel=channel,
        entries=_group(items),
        next_cursor=encode_cursor(items[-1]) if has_more else None,
    )
