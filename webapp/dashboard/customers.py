"""The customer page's data: header, contacts, timeline and why each contact is linked.

The page reads a customer once (``load_customer``) and every part of it,
sections included, works from that CustomerView. The timeline is shown a page
of contact rows at a time (``timeline_page``), by keyset on (createdAt, id).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select

from ..audit import state_lines
from ..database import chunks
from ..extensions import db
from ..identity.rules import EMAIL, PHONE, Key, Row, consolidate
from ..identity.service import blocked_keys, row_from_record
from ..models import AuditCustomer, AuditEntry, Contact, Merge
from .chains import Link, link_chains
from .cursors import decode_cursor, encode_cursor, older_than

# A deleted row's link is not moved by later merges; follow it this far at most.
_MAX_HOPS = 16
# Contact rows per timeline page; other events come with the rows of their time span.
TIMELINE_PAGE_SIZE = 50
# Rows the customer page's contacts table shows; the contacts page shows the rest.
CONTACTS_SHOWN = 50
# Rows per page of the contacts page ("Load more contacts" brings the next page).
CONTACTS_PAGE_SIZE = 200
# E-mails, and phones, the customer page's header shows as chips; the contacts list has them all.
HEADER_VALUES_SHOWN = 10


@dataclass(frozen=True)
class ContactView:
    """One contact row of the customer as the page shows it."""

    id: int
    email: str | None
    phone: str | None
    source: str
    created_at: datetime
    deleted_at: datetime | None
    is_primary: bool
    # For a live secondary: the chain of shared values from the primary (None: no chain).
    chain: list[Link] | None = None
    # For a live secondary with no chain: the last merge that absorbed it as a customer's primary.
    merged_by: MergeNote | None = None


@dataclass(frozen=True)
class MergeNote:
    """A merge in the words of the contacts table: who absorbed the row's customer, and how."""

    survivor_id: int
    cause: str
    actor: str | None
    # The checkout request's values that bridged the two customers, when it was one.
    bridge: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TimelineEvent:
    """Something that happened to the customer, in words the page prints as text."""

    at: datetime
    kind: str  # "contact", "deleted", "merge" or "audit"
    title: str
    actor: str | None = None
    details: list[tuple[str, str]] = field(default_factory=list)
    # Set on "contact" events: the row the timeline pages by, with ``at``.
    contact_id: int | None = None


@dataclass(frozen=True)
class CustomerView:
    """Everything the customer page shows, loaded in one go (templates never query)."""

    primary_id: int
    emails: list[str]
    phone_numbers: list[str]
    first_seen: datetime
    last_seen: datetime
    contacts: list[ContactView]
    # The whole history, oldest first; contact rows in (createdAt, id) order.
    timeline: list[TimelineEvent]
    # The e-mails and phones above that an agent blocked: they link nothing any more.
    blocked_values: frozenset[str] = frozenset()
    # The live rows oldest first by (createdAt, id), and the (kind, key) of each value of
    # theirs that is blocked: the reconciliation panel lists them from here rather than
    # reading the customer again (a second read of 40,000 rows).
    live_rows: list[Row] = field(default_factory=list)
    blocked_keys: frozenset[Key] = frozenset()


def locate_customer(contact_id: int) -> int | None:
    """The primary id of the customer holding contact ``contact_id``, or None when there is none."""
    contact = db.session.get(Contact, contact_id)
    hops = 0
    while contact is not None and contact.linkedId is not None and hops < _MAX_HOPS:
        contact = db.session.get(Contact, contact.linkedId)
        hops += 1
    if contact is None or contact.linkedId is not None or contact.deletedAt is not None:
        return None
    return contact.id


@dataclass
class OrphanedCustomer:
    """A customer whose primary row is not live: deleted by SQL run on the table, outside the app.

    Its live rows still point at ``customer_id``. Identify regroups such a
    customer the next time the checkout reaches it, and so does an agent's
    re-run of reconciliation on any of its rows; until then it has no primary
    to show a page for.
    """

    customer_id: int
    # The oldest live rows pointing at customer_id (ORPHAN_ROWS_SHOWN at most), and how many.
    rows: list[Contact]
    total: int


ORPHAN_ROWS_SHOWN = 50


def find_orphaned(contact_id: int) -> OrphanedCustomer | None:
    """The orphaned customer ``contact_id`` names (its id) or belongs to (a live row of it)."""
    contact = db.session.get(Contact, contact_id)
    if contact is None:
        return None
    # A live row (or one deleted since) names its customer by linkedId; a primary, itself.
    customer_id = contact.linkedId or contact.id
    if customer_id == contact.id and contact.deletedAt is None:
        return None
    parent = db.session.get(Contact, customer_id)
    if parent is not None and parent.deletedAt is None:
        return None
    live = (Contact.linkedId == customer_id, Contact.deletedAt.is_(None))
    rows = list(
        db.session.scalars(
            select(Contact)
            .where(*live)
            .order_by(Contact.createdAt, Contact.id)
            .limit(ORPHAN_ROWS_SHOWN)
        )
    )
    if not rows:
        return None
    total = len(rows)
    if total == ORPHAN_ROWS_SHOWN:
        total = db.session.scalar(select(func.count()).select_from(Contact).where(*live))
    return OrphanedCustomer(customer_id, rows, total)


def _contact_events(contacts: Sequence) -> list[TimelineEvent]:
    """One event per row saying which values it brought first, and one per deletion."""
    known: set[tuple[str, str]] = set()
    events = []
    for contact in sorted(contacts, key=lambda c: (c.createdAt, c.id)):
        added = []
        for kind, key, shown in (
            (EMAIL, contact.email_key, contact.email),
            (PHONE, contact.phone_key, contact.phoneNumber),
        ):
            if key and (kind, key) not in known:
                added.append((f"new {kind}", shown or ""))
            if key is not None:
                known.add((kind, key))
        seen = [("email", contact.email or "—"), ("phone", contact.phoneNumber or "—")]
        events.append(
            TimelineEvent(
                at=contact.createdAt,
                kind="contact",
                title=f"Contact #{contact.id} from {contact.source}",
                details=added or [("nothing new", "same values, another combination"), *seen],
                contact_id=contact.id,
            )
        )
        if contact.deletedAt is not None:
            events.append(
                TimelineEvent(
                    at=contact.deletedAt, kind="deleted", title=f"Contact #{contact.id} deleted"
                )
            )
    return events


# Absorbed customers a grouped merge event names; the rest are counted.
MERGED_NAMED = 10


def _merge_events(merges: list[Merge]) -> list[TimelineEvent]:
    """One event per merging act: the merges one request or action made at one moment
    into one survivor, for the same reason, are one event.

    An unblock that joined 40,000 customers made 40,000 merges at one instant: as
    events of their own they all fell on one timeline page (22 MB of HTML).
    """
    acts: dict[tuple, list[Merge]] = {}
    for merge in sorted(merges, key=lambda m: (m.created_at, m.id)):
        act = (merge.created_at, merge.survivor_id, merge.cause, merge.actor, merge.detail)
        acts.setdefault(act, []).append(merge)
    return [_merge_event(group) for group in acts.values()]


def _merge_event(group: list[Merge]) -> TimelineEvent:
    merge = group[0]
    absorbed = [f"#{m.absorbed_id}" for m in group]
    moved = sum(m.rows_moved for m in group)
    details = [("cause", merge.cause), ("contacts moved", str(moved))]
    if len(group) == 1:
        title = f"Customer #{merge.absorbed_id} merged into #{merge.survivor_id}"
    elif len(group) <= MERGED_NAMED:
        title = f"Customers {', '.join(absorbed[:-1])} and {absorbed[-1]} merged into "
        title += f"#{merge.survivor_id}"
    else:
        title = f"{len(group):,} customers merged into #{merge.survivor_id}"
        rest = len(group) - MERGED_NAMED
        details.insert(0, ("customers", f"{', '.join(absorbed[:MERGED_NAMED])} and {rest:,} more"))
    if merge.detail:
        try:
            values = json.loads(merge.detail)
        except ValueError:
            values = {"detail": merge.detail}
        if isinstance(values, dict):
            details += [(f"request {k}", str(v)) for k, v in values.items()]
    return TimelineEvent(
        at=merge.created_at, kind="merge", title=title, actor=merge.actor, details=details
    )


def audit_details(entry: AuditEntry) -> list[tuple[str, str | list[str]]]:
    """An audit entry's subject, reason, and states before and after (a list of lines
    each), as label/text pairs."""
    details = []
    for label, value in (
        ("subject", entry.subject),
        ("reason", entry.reason),
        ("before", entry.before and state_lines(entry.before)),
        ("after", entry.after and state_lines(entry.after)),
    ):
        if value:
            details.append((label, value))
    return details


def _audit_event(entry: AuditEntry) -> TimelineEvent:
    return TimelineEvent(
        at=entry.created_at,
        kind="audit",
        title=entry.action,
        actor=entry.actor,
        details=audit_details(entry),
    )


def _merge_note(merge: Merge) -> MergeNote:
    try:
        values = json.loads(merge.detail) if merge.detail else {}
    except ValueError:
        values = {}
    bridge = [str(v) for v in values.values()] if isinstance(values, dict) else []
    return MergeNote(merge.survivor_id, merge.cause, merge.actor, bridge)


def _merges(contacts: Sequence) -> list[Merge]:
    ids = [c.id for c in contacts]
    return list(
        db.session.scalars(
            select(Merge).where(or_(Merge.survivor_id.in_(ids), Merge.absorbed_id.in_(ids)))
        )
    )


def _history(contacts: Sequence, merges: list[Merge]) -> list[TimelineEvent]:
    """The timeline of a customer's rows: their events, merges and audit entries, oldest first."""
    ids = [c.id for c in contacts]
    # Entries about the customer, and those naming it: a block that split it off another.
    # Two index reads, not one OR: MariaDB reads "customer_id IN (...) OR id IN (subquery)"
    # by scanning the whole audit log.
    about = list(db.session.scalars(select(AuditEntry).where(AuditEntry.customer_id.in_(ids))))
    # The ids first: joined, an entry came once per row it names, states and all, and
    # an unblock that joined 40,000 customers named each of them (80 GB for one page).
    named = set(
        db.session.scalars(
            select(AuditCustomer.audit_entry_id).where(AuditCustomer.customer_id.in_(ids))
        )
    ) - {entry.id for entry in about}
    naming = [
        entry
        for part in chunks(sorted(named))
        for entry in db.session.scalars(select(AuditEntry).where(AuditEntry.id.in_(part)))
    ]
    # An entry about one of the rows can name another (then a customer's primary): shown once.
    audits = sorted([*about, *naming], key=lambda e: e.id)
    timeline = _contact_events(contacts)
    timeline += _merge_events(merges)
    timeline += [_audit_event(a) for a in audits]
    # Stable: contact rows stay in (createdAt, id) order, the order the timeline pages by.
    timeline.sort(key=lambda event: event.at)
    return timeline


def customer_records(primary_id: int, *, live_only: bool = False) -> list:
    """The rows of the customer ``primary_id`` (deleted ones too, unless ``live_only``),
    oldest first by (createdAt, id), as result rows with the Contact's attribute names.

    Not ORM objects: a junk phone can join 40,000 rows, and loading them as
    Contacts (then expiring them all at the rollback) cost seconds per page.
    """
    conditions = [or_(Contact.id == primary_id, Contact.linkedId == primary_id)]
    if live_only:
        conditions.append(Contact.deletedAt.is_(None))
    return list(
        db.session.execute(
            select(*Contact.__table__.c).where(*conditions).order_by(Contact.createdAt, Contact.id)
        )
    )


def load_customer(primary_id: int, *, history: bool = True) -> CustomerView | None:
    """The customer page of a live primary, or None when ``primary_id`` is not one.

    ``history=False`` leaves the timeline empty and reads no merges or audit
    entries: the contacts page shows only the rows and why each is linked.
    """
    contacts = customer_records(primary_id)
    live = [c for c in contacts if c.deletedAt is None]
    if not any(c.id == primary_id and c.linkedId is None for c in live):
        return None
    rows = [row_from_record(c) for c in live]
    customer = consolidate(primary_id, rows)
    blocked = blocked_keys(db.session.connection(), {k for row in rows for k in row.identifiers()})
    chains = link_chains(primary_id, rows, blocked)
    merges = _merges(contacts) if history else []
    timeline = _history(contacts, merges) if history else []
    # A row no shared value explains mostly came as the primary of a customer merged in.
    absorbed = {m.absorbed_id: m for m in sorted(merges, key=lambda m: (m.created_at, m.id))}
    views = [
        ContactView(
            id=c.id,
            email=c.email,
            phone=c.phoneNumber,
            source=c.source,
            created_at=c.createdAt,
            deleted_at=c.deletedAt,
            is_primary=c.id == primary_id,
            chain=chains.get(c.id),
            merged_by=(
                _merge_note(absorbed[c.id])
                if c.id in absorbed and chains.get(c.id) is None
                else None
            ),
        )
        for c in sorted(contacts, key=lambda c: (c.id != primary_id, c.createdAt, c.id))
    ]
    view = CustomerView(
        primary_id=primary_id,
        emails=customer.emails,
        phone_numbers=customer.phone_numbers,
        first_seen=min(row.created_at for row in rows),
        last_seen=max(row.created_at for row in rows),
        contacts=views,
        timeline=timeline,
        live_rows=rows,
        blocked_keys=frozenset(blocked),
        blocked_values=frozenset(
            value
            for row in rows
            for value, key in (
                (row.email, (EMAIL, row.email_key)),
                (row.phone, (PHONE, row.phone_key)),
            )
            if key in blocked
        ),
    )
    db.session.rollback()
    return view


@dataclass(frozen=True)
class TimelinePage:
    """One page of a customer's timeline in the order asked, and the cursor of the next page."""

    events: list[TimelineEvent]
    newest_first: bool
    next_cursor: str | None


def _row_key(event: TimelineEvent) -> tuple[datetime, int]:
    return (event.at, event.contact_id or 0)


def timeline_page(
    customer: CustomerView,
    *,
    newest_first: bool = True,
    after: str | None = None,
    page_size: int = TIMELINE_PAGE_SIZE,
) -> TimelinePage:
    """The ``page_size`` contact rows after the cursor ``after``, with the other events between.

    Keyset on (createdAt, id), not an offset, so rows arriving while an agent
    reads do not shift the pages. Deletions, merges and audit entries belong to
    the page whose time span holds them; raises InvalidCursor.
    """
    cursor = decode_cursor(after) if after else None
    ordered = customer.timeline[::-1] if newest_first else customer.timeline

    def comes_after(key: tuple[datetime, int]) -> bool:
        return cursor is None or (key < cursor if newest_first else key > cursor)

    rows = [e for e in ordered if e.contact_id is not None and comes_after(_row_key(e))]
    has_more = len(rows) > page_size
    rows = rows[:page_size]
    last = rows[-1].at if has_more else None
    shown = {event.contact_id for event in rows}
    events = []
    for event in ordered:
        if event.contact_id is None:
            # Same bounds as the rows: strictly past the cursor, up to the last row's time.
            past_cursor = cursor is None or (
                event.at < cursor[0] if newest_first else event.at > cursor[0]
            )
            before_end = last is None or (event.at >= last if newest_first else event.at <= last)
            if past_cursor and before_end:
                events.append(event)
        elif event.contact_id in shown:
            events.append(event)
    return TimelinePage(
        events=events,
        newest_first=newest_first,
        next_cursor=encode_cursor(*_row_key(rows[-1])) if has_more else None,
    )


@dataclass(frozen=True)
class AuditPage:
    """A page of the audit log, newest first."""

    entries: list[AuditEntry]
    # Continues after the last entry shown; None on the last page.
    next_cursor: str | None
    action: str | None
    actions: list[str]


def audit_log(
    action: str | None = None, before: str | None = None, page_size: int = 50
) -> AuditPage:
    """Audit entries newest first, optionally of one action, and the actions there are.

    ``before`` (a cursor from a previous page) continues strictly after that
    page's last entry, so entries recorded meanwhile neither repeat an entry
    already shown nor push one past the next page, as an offset would.
    Raises InvalidCursor for a cursor this function did not write.
    """
    c = AuditEntry
    statement = select(c).order_by(c.created_at.desc(), c.id.desc())
    if action:
        statement = statement.where(c.action == action)
    if before is not None:
        at, entry_id = decode_cursor(before)
        statement = statement.where(older_than(c.created_at, c.id, at, entry_id))
    found = list(db.session.scalars(statement.limit(page_size + 1)))
    actions = list(db.session.scalars(_audit_actions()))
    for entry in found:
        db.session.expunge(entry)
    db.session.rollback()
    entries = found[:page_size]
    return AuditPage(
        entries=entries,
        next_cursor=(
            encode_cursor(entries[-1].created_at, entries[-1].id)
            if len(found) > page_size
            else None
        ),
        action=action or None,
        actions=actions,
    )


def _audit_actions():
    """The actions the audit log holds, in order, read off the (action, ...) index.

    A plain DISTINCT read every entry on SQLite (about 150 ms with 500,000
    entries; so did MariaDB before the index). MariaDB skips from one action to
    the next in the index by itself ("Using index for group-by"); SQLite is asked
    for each action as the smallest one after the last, one index search each.
    (MariaDB would search the whole index for each step of that form.)
    """
    action = AuditEntry.__table__.c.action
    if db.session.get_bind().dialect.name != "sqlite":
        return select(action).distinct().order_by(action)
    first = select(func.min(action).label("action")).cte("audit_action", recursive=True)
    following = select(
        select(func.min(action)).where(action > first.c.action).scalar_subquery()
    ).where(first.c.action.is_not(None))
    found = first.union_all(following)
    return select(found.c.action).where(found.c.action.is_not(None)).order_by(found.c.action)
