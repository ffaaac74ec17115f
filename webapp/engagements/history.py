"""Reading engagement history: timeline pages, display names, customer cards and lookups."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from flask import current_app
from sqlalchemy import Connection, and_, or_, select, union_all

from ..extensions import db
from ..identity.rules import Customer, Row, Value, consolidate
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
    records = conn.execute(
        select(*ROW_COLUMNS, _c.deletedAt).where(
            or_(_c.id == primary_id, _c.linkedId == primary_id)
        )
    ).all()
    live = [row_from_record(r) for r in records if r.deletedAt is None]
    if not any(row.id == primary_id and row.is_primary for row in live):
        return None
    return HistoryRows(live, frozenset(r.id for r in records if r.deletedAt is not None))


def older_than(occurred_at: datetime, event_id: int):
    """The condition "after (occurred_at, id) newest first", in a form indexes serve."""
    return or_(_e.occurred_at < occurred_at, and_(_e.occurred_at == occurred_at, _e.id < event_id))


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
    if not contact_ids:
        return []

    def newest(condition):
        # Only (id, occurred_at): the index alone answers, no table row is read yet.
        query = select(_e.id, _e.occurred_at).where(condition)
        if channel is not None:
            query = query.where(_e.channel == channel)
        if before is not None:
            query = query.where(older_than(*before))
        return query.order_by(_e.occurred_at.desc(), _e.id.desc()).limit(limit)

    ids = sorted(set(contact_ids))
    if len(ids) == 1:
        top = newest(_e.contact_id == ids[0]).subquery("top")
    elif len(ids) > _MAX_PER_ROW_QUERIES:
        top = newest(_e.contact_id.in_(ids)).subquery("top")
    else:
        slices = [newest(_e.contact_id == cid).subquery() for cid in ids]
        merged = union_all(*(select(*part.c) for part in slices)).subquery("merged")
        top = (
            select(*merged.c)
            .order_by(merged.c.occurred_at.desc(), merged.c.id.desc())
            .limit(limit)
            .subquery("top")
        )
    # Then read the full rows of the page's events only.
    statement = (
        select(*_COLUMNS)
        .select_from(Engagement.__table__.join(top, _e.id == top.c.id))
        .order_by(_e.occurred_at.desc(), _e.id.desc())
    )
    return [
        EngagementItem(**row._mapping, contact_deleted=row.contact_id in deleted)
        for row in conn.execute(statement)
    ]


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


def customer_card(conn: Connection, primary_id: int, *, recent: int = 5) -> CustomerCard | None:
    """The card of the customer whose primary row is ``primary_id``; None if it has no live rows.

    Its recent engagements include those on since-deleted rows, marked, as the
    customer page's activity does.
    """
    rows = history_rows(conn, primary_id)
    if rows is None:
        return None
    customer = consolidate(primary_id, rows.live)
    return CustomerCard(
        customer=customer,
        name=display_name(conn, [row.id for row in rows.live]),
        recent=engagement_page(conn, rows.ids, limit=recent, deleted=rows.deleted_ids),
        vouchers=valid_vouchers(primary_id),
    )


def cards_holding(value: Value, *, recent: int) -> tuple[list[CustomerCard], bool]:
    """The card of every customer holding ``value``, and whether it is blocked; one transaction."""
    conn = db.session.connection()
    try:
        holding = customers_holding(conn, value)
        cards = [customer_card(conn, cid, recent=recent) for cid in holding.customer_ids]
    finally:
        db.session.rollback()
    return [card for card in cards if card is not None], holding.blocked


def valid_vouchers(primary_id: int) -> list[dict]:
    """The customer's valid vouchers, from the provider the vouchers area registers.

    Hook: ``app.extensions["customer_vouchers"]`` is a callable(primary_id) ->
    list of JSON-ready dicts; with none registered a customer has no vouchers.
    """
    provider = current_app.extensions.get("customer_vouchers")
    return list(provider(primary_id)) if provider else []


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
    keys = _held_keys(value)
    if blocked_keys(conn, [(value.kind, key) for key in keys]):
        return Holders([], blocked=True)
    column = _c.phone_key if value.kind == "phone" else _c.email_key
    found = conn.execute(
        select(_c.id, _c.linkedId).where(column.in_(keys), _c.deletedAt.is_(None))
    ).all()
    return Holders(sorted({linked if linked is not None else cid for cid, linked in found}), False)
