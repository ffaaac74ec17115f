"""Reading engagement history: timeline pages, display names, customer cards and lookups."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple, TypeVar

from flask import current_app
from sqlalchemy import Connection, and_, or_, select, union_all

from ..dashboard.cursors import older_than
from ..database import chunks
from ..extensions import db
from ..identity.rules import EMAIL, PHONE, Customer, Row, Value, consolidate
from ..identity.service import ROW_COLUMNS, blocked_keys, row_from_record
from ..models import Contact
from .models import NAME_FROM_AGENT, ContactName, Engagement

_c = Contact.__table__.c
_e = Engagement.__table__.c
_n = ContactName.__table__.c

_COLUMNS = (
    _e.id,
    _e.contact_id,
    _e.channel,
    _e.direction,
    _e.occurred_at,
    _e.summary,
    _e.url,
    _e.duration_seconds,
    _e.external_id,
)

K = TypeVar("K")

# Past this many contact rows one IN query beats a sub-query per row.
_MAX_PER_ROW_QUERIES = 64


@dataclass(frozen=True)
class EngagementItem:
    """One stored engagement as the timeline and the API show it."""

    id: int
    contact_id: int
    channel: str
    direction: str | None
    occurred_at: datetime
    summary: str | None
    url: str | None
    duration_seconds: int | None
    external_id: str | None
    # Recorded on a contact row that was deleted later: still the customer's.
    contact_deleted: bool = False

    def to_json(self) -> dict:
        """The API's Engagement object."""
        return {
            "id": self.id,
            "contactId": self.contact_id,
            "contactDeleted": self.contact_deleted,
            "channel": self.channel,
            "direction": self.direction,
            "occurredAt": self.occurred_at.isoformat() + "Z",
            "summary": self.summary,
            "url": self.url,
            "durationSeconds": self.duration_seconds,
            "externalId": self.external_id,
        }


@dataclass
class CustomerCard:
    """A customer with its display name, identifiers and latest engagements."""

    customer: Customer
    name: str | None
    recent: list[EngagementItem]
    vouchers: list[dict] = field(default_factory=list)

    @property
    def customer_id(self) -> int:
        return self.customer.primary_id

    @property
    def contact_ids(self) -> list[int]:
        return [self.customer.primary_id, *self.customer.secondary_ids]

    def to_json(self) -> dict:
        """The API's CustomerCard object."""
        return {
            "customerId": self.customer_id,
            "name": self.name,
            "emails": self.customer.emails,
            "phoneNumbers": self.customer.phone_numbers,
            "contactIds": self.contact_ids,
            "recentEngagements": [item.to_json() for item in self.recent],
            "vouchers": self.vouchers,
        }


@dataclass(frozen=True)
class HistoryRows:
    """A customer's contact rows for its history: the live ones, and deleted ones still linked."""

    live: list[Row]
    deleted_ids: frozenset[int]

    @property
    def ids(self) -> list[int]:
        """Every row whose engagements are the customer's, deleted rows included."""
        return [row.id for row in self.live] + sorted(self.deleted_ids)


def history_rows(conn: Connection, primary_id: int) -> HistoryRows | None:
    """The rows of the customer whose primary is ``primary_id``; None when that is no live primary.

    Deleted rows stay linked (merges move them too), and what was recorded on
    them happened to this customer, so their engagements belong to its history.
    """
    return histories_rows(conn, [primary_id]).get(primary_id)


def histories_rows(conn: Connection, primary_ids: Sequence[int]) -> dict[int, HistoryRows]:
    """``history_rows`` of many customers in one read per chunk; ids that are no live primary
    are left out."""
    wanted = sorted(set(primary_ids))
    records: dict[int, list] = {pid: [] for pid in wanted}
    for part in chunks(wanted):
        # One customer, the usual case (a page): plain equality.
        reach = (
            or_(_c.id == part[0], _c.linkedId == part[0])
            if len(part) == 1
            else or_(_c.id.in_(part), _c.linkedId.in_(part))
        )
        found = conn.execute(select(*ROW_COLUMNS, _c.deletedAt).where(reach))
        for record in found:
            # A row is its own customer's, and the one its link names.
            for owner in {record.id, record.linkedId}.intersection(part):
                records[owner].append(record)
    histories = {}
    for pid, mine in records.items():
        live = [row_from_record(r) for r in mine if r.deletedAt is None]
        if any(row.id == pid and row.is_primary for row in live):
            deleted = frozenset(r.id for r in mine if r.deletedAt is not None)
            histories[pid] = HistoryRows(live, deleted)
    return histories


def engagement_page(
    conn: Connection,
    contact_ids: Sequence[int],
    *,
    channel: str | None = None,
    before: tuple[datetime, int] | None = None,
    limit: int = 50,
    deleted: Collection[int] = (),
) -> list[EngagementItem]:
    """The newest ``limit`` engagements of these contact rows older than ``before``.

    Items on the rows in ``deleted`` are marked ``contact_deleted``.

    Each contact row's event ids are read newest first straight off the
    (contact_id[, channel], occurred_at, id) index and stopped at ``limit``;
    the per-row slices are merged and only the page's rows are then read, so
    the cost follows the page size, not the history's length.
    """
    pages = engagement_pages(
        conn, {0: contact_ids}, channel=channel, before=before, limit=limit, deleted=deleted
    )
    return pages[0]


def engagement_pages(
    conn: Connection,
    rows_of: Mapping[K, Sequence[int]],
    *,
    channel: str | None = None,
    before: tuple[datetime, int] | None = None,
    limit: int = 50,
    deleted: Collection[int] = (),
) -> dict[K, list[EngagementItem]]:
    """``engagement_page`` of several customers, {customer: its contact rows}, in one statement.

    The customers' rows must not overlap (two customers never share a row).
    """
    pages: dict[K, list[EngagementItem]] = {owner: [] for owner in rows_of}
    owner_of = {cid: owner for owner, ids in rows_of.items() for cid in ids}
    tops = [
        _newest_ids(sorted(set(ids)), channel=channel, before=before, limit=limit).subquery()
        for ids in rows_of.values()
        if ids
    ]
    if not tops:
        return pages
    if len(tops) == 1:
        top = tops[0]
    else:
        top = union_all(*(select(*part.c) for part in tops)).subquery("tops")
    # Then read the full rows of the pages' events only.
    statement = (
        select(*_COLUMNS)
        .select_from(Engagement.__table__.join(top, _e.id == top.c.id))
        .order_by(_e.occurred_at.desc(), _e.id.desc())
    )
    for row in conn.execute(statement):
        pages[owner_of[row.contact_id]].append(
            EngagementItem(**row._mapping, contact_deleted=row.contact_id in deleted)
        )
    return pages


def _newest_ids(
    ids: Sequence[int], *, channel: str | None, before: tuple[datetime, int] | None, limit: int
):
    """(id, occurred_at) of the newest ``limit`` engagements of the contact rows ``ids``."""

    def newest(condition):
        # Only (id, occurred_at): the index alone answers, no table row is read yet.
        query = select(_e.id, _e.occurred_at).where(condition)
        if channel is not None:
            query = query.where(_e.channel == channel)
        if before is not None:
            query = query.where(older_than(_e.occurred_at, _e.id, *before))
        return query.order_by(_e.occurred_at.desc(), _e.id.desc()).limit(limit)

    if len(ids) == 1:
        return newest(_e.contact_id == ids[0])
    if len(ids) > _MAX_PER_ROW_QUERIES:
        return newest(_e.contact_id.in_(ids))
    slices = [newest(_e.contact_id == cid).subquery() for cid in ids]
    merged = union_all(*(select(*part.c) for part in slices)).subquery("merged")
    return select(*merged.c).order_by(merged.c.occurred_at.desc(), merged.c.id.desc()).limit(limit)


def display_name(conn: Connection, contact_ids: Sequence[int]) -> str | None:
    """The agent-set name (newest) if any, else the oldest name an event brought.

    ``contact_ids`` are the customer's live rows. An agent names the customer,
    not a row, so a name an agent set on a row deleted since (the primary row,
    say) still counts; names events brought on deleted rows do not.
    """
    if not contact_ids:
        return None
    return display_names(conn, {contact_ids[0]: contact_ids}).get(contact_ids[0])


def display_names(conn: Connection, customers: Mapping[int, Sequence[int]]) -> dict[int, str]:
    """``display_name`` of many customers in one query: {customer: its live rows} -> names.

    Customers with no name are left out. The rows of two customers never
    overlap, so each name read belongs to one of them.
    """
    owner = {cid: customer for customer, ids in customers.items() for cid in ids}
    if not owner:
        return {}
    ids = list(owner)
    deleted_linked = select(_c.id).where(_c.linkedId.in_(ids), _c.deletedAt.is_not(None))
    rows = conn.execute(
        select(_n.name, _n.source, _n.created_at, _n.id, _n.contact_id, _c.linkedId)
        .join(Contact.__table__, _c.id == _n.contact_id)
        .where(
            or_(
                _n.contact_id.in_(ids),
                and_(_n.source == NAME_FROM_AGENT, _n.contact_id.in_(deleted_linked)),
            )
        )
    ).all()
    agent: dict[int, list] = {}
    brought: dict[int, list] = {}
    for r in rows:
        # A deleted row's name belongs to the customer its link points into.
        customer = owner[r.contact_id] if r.contact_id in owner else owner[r.linkedId]
        (agent if r.source == NAME_FROM_AGENT else brought).setdefault(customer, []).append(r)
    names = {c: min(found, key=lambda r: (r.created_at, r.id)).name for c, found in brought.items()}
    names |= {c: max(found, key=lambda r: (r.created_at, r.id)).name for c, found in agent.items()}
    return names


def customer_cards(
    conn: Connection, primary_ids: Sequence[int], *, recent: int = 5
) -> dict[int, CustomerCard]:
    """The cards of the customers whose primary rows are ``primary_ids``, by primary id.

    A customer with no live primary row is left out. Each card's recent
    engagements include those on since-deleted rows, marked, as the customer
    page's activity does. The customers' rows, names, vouchers and recent
    engagements are read once for all of them, not a customer at a time.
    """
    histories = histories_rows(conn, primary_ids)
    names = display_names(
        conn, {pid: [row.id for row in rows.live] for pid, rows in histories.items()}
    )
    vouchers = valid_vouchers(list(histories))
    deleted = frozenset().union(*(rows.deleted_ids for rows in histories.values()))
    engagements = engagement_pages(
        conn, {pid: rows.ids for pid, rows in histories.items()}, limit=recent, deleted=deleted
    )
    return {
        pid: CustomerCard(
            customer=consolidate(pid, rows.live),
            name=names.get(pid),
            recent=engagements[pid],
            vouchers=vouchers.get(pid, []),
        )
        for pid, rows in histories.items()
    }


def cards_holding(value: Value, *, recent: int) -> tuple[list[CustomerCard], bool]:
    """The card of every customer holding ``value``, and whether it is blocked; one transaction."""
    conn = db.session.connection()
    try:
        holding = customers_holding(conn, value)
        cards = customer_cards(conn, holding.customer_ids, recent=recent)
    finally:
        db.session.rollback()
    return [cards[cid] for cid in holding.customer_ids if cid in cards], holding.blocked


def valid_vouchers(primary_ids: Sequence[int]) -> dict[int, list[dict]]:
    """Each customer's valid vouchers, from the provider the vouchers area registers.

    Hook: ``app.extensions["customer_vouchers"]`` is a callable(list of
    primary ids) -> {primary id: list of JSON-ready dicts}; with none
    registered a customer has no vouchers.
    """
    provider = current_app.extensions.get("customer_vouchers")
    return provider(list(primary_ids)) if provider and primary_ids else {}


def phone_key_variants(key: str) -> list[str]:
    """The phone keys one number can be stored under: with +, with 00, or bare."""
    if key.startswith("+"):
        digits = key[1:]
    elif key.startswith("00"):
        digits = key[2:]
    else:
        digits = key
    return sorted({key, digits, "+" + digits, "00" + digits})


def _held_keys(value: Value) -> list[str]:
    return phone_key_variants(value.key) if value.kind == "phone" else [value.key]


def match_word(count: int) -> str:
    """How many customers a value names, as the API and the pop say it: none, one, several."""
    return {0: "none", 1: "one"}.get(count, "several")


class Holders(NamedTuple):
    """The customers a value names (primary ids), and whether agents blocked it."""

    customer_ids: list[int]
    blocked: bool


def customers_holding(conn: Connection, value: Value) -> Holders:
    """Every customer with a live row holding ``value`` (phones in any prefix form).

    None for a blocked value: a shop's switchboard or a shared test address
    is held by many customers and names none of them.
    """
    return holders_of(conn, [value])[0]


def holders_of(conn: Connection, values: Sequence[Value]) -> list[Holders]:
    """``customers_holding`` of each of ``values``, in order, with one read per kind of value."""
    held = {value: _held_keys(value) for value in values}
    blocked = blocked_keys(conn, {(v.kind, key) for v, keys in held.items() for key in keys})
    owners: dict[tuple[str, str], set[int]] = {}
    for kind, column in ((PHONE, _c.phone_key), (EMAIL, _c.email_key)):
        keys = sorted({key for v, ks in held.items() if v.kind == kind for key in ks})
        for part in chunks(keys):
            found = conn.execute(
                select(column, _c.id, _c.linkedId).where(column.in_(part), _c.deletedAt.is_(None))
            )
            for key, cid, linked in found:
                owners.setdefault((kind, key), set()).add(linked if linked is not None else cid)
    answers = []
    for value in values:
        keys = held[value]
        if any((value.kind, key) in blocked for key in keys):
            answers.append(Holders([], blocked=True))
        else:
            found = set().union(*(owners.get((value.kind, key), set()) for key in keys))
            answers.append(Holders(sorted(found), False))
    return answers
