"""Manual reconciliation actions: link, merge, block, unblock, delete and re-run.

Each is one write transaction (see ``core``) that locks the customers it may
change, writes its change, the merges it causes and an audit entry together.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, insert, or_, select, update

from ..dashboard.cursors import decode_cursor, encode_cursor, older_than
from ..dashboard.customers import CustomerView, customer_records
from ..database import write_transaction
from ..extensions import db
from ..identity.evidence import add_bond, withdraw_unheld
from ..identity.rules import (
    EMAIL,
    PHONE,
    Customer,
    Key,
    Row,
    Value,
    consolidate,
    joining_time,
    parse_key,
)
from ..identity.search_index import index_contact
from ..identity.service import ROW_COLUMNS, blocked_keys, lock_claims, lock_keys, row_from_record
from ..models import SECONDARY, Contact, Identifier, utcnow
from .core import (
    AGENT,
    RECONCILE,
    NotFound,
    Outcome,
    ReconcileError,
    audit,
    holders,
    home_of,
    live_customer_of,
    lock_view,
    outcome_of,
    primary_in,
    primary_of,
    settle,
    with_hanging,
    write_plan,
)

_c = Contact.__table__.c
_i = Identifier.__table__.c


def reconcile_customer(contact_id: int, actor: str) -> Outcome:
    """Recompute one customer (and any it must merge with) from its rows; fix links."""

    def work(conn: Connection) -> Outcome:
        view, _ = lock_view(conn, {primary_of(conn, contact_id)})
        primary = primary_in(view, contact_id)
        plan = with_hanging(conn, view).plan()
        write_plan(conn, plan, cause=RECONCILE, actor=actor)
        home = home_of(plan, view.rows, primary)
        outcome = outcome_of(RECONCILE, home, plan, view.rows, {primary})
        outcome.deleted_relinks = plan.deleted_relinks
        audit(actor, outcome, subject=f"customer {primary}")
        db.session.commit()
        return outcome

    return write_transaction(work)


def customer_snapshot(contact_id: int) -> Customer:
    """The customer a contact belongs to, consolidated (read-only)."""
    conn = db.session.connection()
    try:
        primary = live_customer_of(conn, contact_id)
        records = conn.execute(
            select(*Contact.__table__.c).where(
                or_(_c.id == primary, _c.linkedId == primary), _c.deletedAt.is_(None)
            )
        )
        rows = [row_from_record(r) for r in records]
    finally:
        db.session.rollback()
    _still_primary(primary, rows)
    return consolidate(primary, rows)


def _still_primary(primary: int, rows: Sequence[Row]) -> None:
    """ReconcileError unless ``primary`` is a live primary among ``rows``.

    The customer and its rows are two reads; at READ COMMITTED (MariaDB) a
    merge or delete committed between them shows in the second only.
    """
    if not any(row.id == primary and row.is_primary for row in rows):
        raise ReconcileError(f"customer #{primary} changed while it was read; try again")


def link_values(contact_id: int, values: Sequence[Value], actor: str) -> Outcome:
    """Add an e-mail and/or phone to a customer, as an identify request attributed to an agent.

    The values are claimed like identify claims them; a value new to every
    customer is stored in a new row (source "agent"); a value another customer
    holds merges the two, the older primary surviving. The agent's word is
    kept as a bond between the values and the customer's primary row, so that
    recomputing the customer later keeps them together.
    """
    if not values:
        raise ReconcileError("enter an email address or a phone number")

    def work(conn: Connection) -> Outcome:
        refused = lock_claims(conn, values)
        wanted = {(v.kind, v.key) for v in values}
        if refused:
            shown = ", ".join(key for _, key in sorted(refused))
            raise ReconcileError(f"{shown} is blocked: a blocked value links nothing")
        seeds = {live_customer_of(conn, contact_id)} | holders(conn, wanted)
        view, held = lock_view(conn, seeds)
        primary = primary_in(view, contact_id)
        mine = {k for row in view.rows if row.primary_id == primary for k in row.identifiers()}
        if wanted <= mine:
            raise ReconcileError("this customer already has these values")
        known = {k for row in view.rows for k in row.identifiers()}
        added = None
        if not wanted <= known:
            email = next((v for v in values if v.kind == EMAIL), None)
            phone = next((v for v in values if v.kind != EMAIL), None)
            now = joining_time(utcnow(), view.rows, primary)
            added = conn.execute(
                insert(Contact.__table__).values(
                    email=email.stored if email else None,
                    phoneNumber=phone.stored if phone else None,
                    email_key=email.key if email else None,
                    phone_key=phone.key if phone else None,
                    linkedId=primary,
                    linkPrecedence=SECONDARY,
                    createdAt=now,
                    updatedAt=now,
                    source=AGENT,
                )
            ).inserted_primary_key[0]
            index_contact(conn, added, email.key if email else None, phone.key if phone else None)
        anchor = next(row for row in view.rows if row.id == primary)
        keys = wanted | set(anchor.identifiers())
        add_bond(conn, keys, contact_id=primary, cause="link", actor=actor)
        view, plan = settle(conn, held, actor=actor, cause=AGENT)
        home = home_of(plan, view.rows, primary)
        by_id = {row.id: row for row in view.rows}
        group = next((g for g in plan.groups if g[0] == home), [])
        if not wanted <= {k for row_id in group for k in by_id[row_id].identifiers()}:
            # The bond ties the values to the primary row's; blocked ones tie nothing.
            raise ReconcileError(
                f"the primary row (#{primary}) holds only blocked values, so what is linked"
                " would not stay with this customer; unblock one of them first"
            )
        # The customers as they were: the row this link added did not exist yet.
        before_rows = [row for row in view.rows if row.id != added]
        outcome = outcome_of("link", home, plan, before_rows, {primary})
        outcome.added_row = added
        shown = ", ".join(v.stored for v in values)
        audit(actor, outcome, subject=f"customer {primary}: {shown}")
        db.session.commit()
        return outcome

    return write_transaction(work)


@dataclass(frozen=True)
class MergePreview:
    """What merging two customers would do: who survives and how many rows move."""

    survivor: Customer
    absorbed: Customer
    rows_moved: int


def merge_preview(contact_id: int, other_id: int) -> MergePreview:
    """Preview merging the customers of two contacts (read-only): the older primary survives."""
    conn = db.session.connection()
    try:
        first, second = live_customer_of(conn, contact_id), live_customer_of(conn, other_id)
        if first == second:
            raise ReconcileError("these contacts already belong to one customer")
        records = conn.execute(
            select(*Contact.__table__.c).where(
                or_(_c.id.in_([first, second]), _c.linkedId.in_([first, second])),
                _c.deletedAt.is_(None),
            )
        )
        rows = [row_from_record(r) for r in records]
    finally:
        db.session.rollback()
    _still_primary(first, rows)
    _still_primary(second, rows)
    by_id = {row.id: row for row in rows}
    survivor, absorbed = sorted((by_id[first], by_id[second]), key=lambda r: (r.created_at, r.id))
    return MergePreview(
        survivor=consolidate(survivor.id, rows),
        absorbed=consolidate(absorbed.id, rows),
        rows_moved=sum(1 for row in rows if row.primary_id == absorbed.id),
    )


def merge_customers(contact_id: int, other_id: int, actor: str) -> Outcome:
    """Merge the customers of two contacts: the older primary survives; a merge row records it.

    The bond kept is between the two primary rows' values, so blocking a value
    that joined a secondary still splits that secondary off later.
    """

    def work(conn: Connection) -> Outcome:
        seeds = {live_customer_of(conn, contact_id), live_customer_of(conn, other_id)}
        view, held = lock_view(conn, seeds)
        first, second = primary_in(view, contact_id), primary_in(view, other_id)
        if first == second:
            raise ReconcileError("these contacts already belong to one customer")
        by_id = {row.id: row for row in view.rows}
        keys = set(by_id[first].identifiers()) | set(by_id[second].identifiers())
        add_bond(conn, keys, contact_id=first, cause="merge", actor=actor)
        view, plan = settle(conn, held, actor=actor, cause=AGENT)
        home = home_of(plan, view.rows, first)
        if home is None or home != home_of(plan, view.rows, second):
            raise ReconcileError("these customers share no value that is not blocked")
        outcome = outcome_of("merge", home, plan, view.rows, {first, second})
        audit(actor, outcome, subject=f"customers {first} and {second}")
        db.session.commit()
        return outcome

    return write_transaction(work)


def _identifier(conn: Connection, value: Value):
    return conn.execute(
        select(Identifier.__table__).where(_i.kind == value.kind, _i.key == value.key)
    ).first()


def set_blocked(value: Value, blocked: bool, actor: str, reason: str | None = None) -> Outcome:
    """Block (or unblock) a value; the customers holding it are recomputed.

    A blocked value connects nothing, in /identify and here: customers joined
    only through it split apart. Unblocking joins again what the rules say.
    The claim row is locked first, as identify locks it, so no request links
    through the value while it changes.
    """
    action = "block" if blocked else "unblock"
    if blocked and not (reason or "").strip():
        raise ReconcileError("say why the value is blocked")

    def work(conn: Connection) -> Outcome:
        lock_claims(conn, [value])
        claim = _identifier(conn, value)
        if (claim.blocked_at is not None) == blocked:
            raise ReconcileError(f"{value.key} is {'already' if blocked else 'not'} blocked")
        before_state = {
            "blocked_at": claim.blocked_at,
            "blocked_reason": claim.blocked_reason,
            "blocked_by": claim.blocked_by,
        }
        state = {
            "blocked_at": utcnow() if blocked else None,
            "blocked_reason": reason.strip() if blocked else None,
            "blocked_by": actor if blocked else None,
        }
        conn.execute(update(Identifier.__table__).where(_i.id == claim.id).values(**state))
        key = (value.kind, value.key)
        holding = holders(conn, [key])
        outcome = Outcome(action=action, customer_id=None)
        if holding:
            # Read again under the locks: another agent may have split a holder off since.
            view, _ = lock_view(conn, holding, holding=[key])
            # The holders as read under the locks: the view holds every one of them.
            holding = {r.primary_id for r in view.rows if key in r.identifiers()} or holding
            plan = view.plan()
            write_plan(conn, plan, cause=AGENT, actor=actor)
            oldest = min(holding)
            home = home_of(plan, view.rows, oldest)
            outcome = outcome_of(action, home, plan, view.rows, holding)
        audit(
            actor,
            outcome,
            subject=f"{value.kind} {value.key}",
            reason=reason if blocked else claim.blocked_reason,
            before=before_state,
            after=state,
        )
        db.session.commit()
        return outcome

    return write_transaction(work)


# Blocked values per page of /blocked.
BLOCKED_PAGE_SIZE = 100


@dataclass(frozen=True)
class BlockedPage:
    """A page of blocked values, most recently blocked first, and the cursor of the next."""

    identifiers: list[Identifier]
    next_cursor: str | None


def blocked_identifiers(
    before: str | None = None, page_size: int = BLOCKED_PAGE_SIZE
) -> BlockedPage:
    """Blocked values, most recently blocked first, a page at a time.

    ``before`` (a cursor from the previous page) continues after that page's
    last value. The ``blocked_at`` index holds them in order; without it, and
    without pages, the page read every identifier and showed every blocked
    one (5,000 blocked among 440,000: 0.3 to 0.5 s and 4 MB of HTML).
    Raises InvalidCursor for a cursor ``encode_cursor`` did not write.
    """
    i = Identifier
    statement = select(i).where(i.blocked_at.is_not(None))
    if before is not None:
        at, after_id = decode_cursor(before)
        statement = statement.where(older_than(i.blocked_at, i.id, at, after_id))
    statement = statement.order_by(i.blocked_at.desc(), i.id.desc()).limit(page_size + 1)
    found = list(db.session.scalars(statement))
    shown = found[:page_size]
    more = len(found) > page_size
    return BlockedPage(shown, encode_cursor(shown[-1].blocked_at, shown[-1].id) if more else None)


def delete_contact(contact_id: int, actor: str, reason: str | None = None) -> Outcome:
    """Soft-delete a contact row; its customer is recomputed and may split.

    When the row was the primary, the oldest remaining row of its group
    becomes the primary.
    """

    def work(conn: Connection) -> Outcome:
        row = _live_row(conn, contact_id)
        # The claims of the row's values first, in the order identify and a
        # block take locks: an agent deleting the other last holder of a
        # blocked value (another customer's row) waits, then reads this delete,
        # so one of the two withdraws the value from its bonds.
        lock_keys(conn, row.identifiers())
        view, held = lock_view(conn, {row.primary_id})
        primary = primary_in(view, contact_id)
        conn.execute(
            update(Contact.__table__)
            .where(_c.id == contact_id)
            .values(deletedAt=utcnow(), updatedAt=utcnow())
        )
        gone = next(row for row in view.rows if row.id == contact_id)
        withdraw_unheld(conn, gone.identifiers())
        view, plan = settle(conn, held, actor=actor, cause=AGENT)
        # None when the customer's last live row was the one deleted.
        home = home_of(plan, view.rows, primary)
        # The customers as they were: the deleted row was still one of theirs.
        outcome = outcome_of("delete", home, plan, [*view.rows, gone], {primary})
        if contact_id == primary:
            outcome.deleted_primary = contact_id
        audit(actor, outcome, subject=f"contact {contact_id}", reason=reason)
        db.session.commit()
        return outcome

    return write_transaction(work)


def _live_row(conn: Connection, contact_id: int) -> Row:
    """A live contact row (its values never change); NotFound otherwise."""
    found = conn.execute(select(*ROW_COLUMNS, _c.deletedAt).where(_c.id == contact_id)).first()
    if found is None:
        raise NotFound(f"there is no contact {contact_id}")
    if found.deletedAt is not None:
        raise NotFound(f"contact {contact_id} was deleted already, by someone else just now")
    return row_from_record(found)


def find_contact(contact_id: int) -> Contact | None:
    """A contact row, deleted or not; None when no row has this id."""
    return db.session.get(Contact, contact_id)


def identifier_value(identifier_id: int) -> Value:
    """The value a claim row holds, ready for ``set_blocked``; NotFound when there is none."""
    claim = db.session.get(Identifier, identifier_id)
    if claim is None:
        raise NotFound(f"there is no identifier {identifier_id}")
    return parse_key(claim.kind, claim.key)


# The customer page's panel lists this many values and as many contacts; "Show all" the rest.
PANEL_SHOWN = 20


# Values and contacts per page of the values page. Each value carries its block form:
# listing all 80,000 of a customer whose 40,000 rows a junk phone joined made 68 MB of HTML.
VALUES_PAGE_SIZE = 500


def panel_data(primary_id: int, shown: int = PANEL_SHOWN, start: int = 0) -> dict:
    """The reconciliation panel: ``shown`` values (blocked or not) and live contacts from
    the ``start``-th of each (oldest first); the totals say how many there are.

    Reads the customer's live rows: the values page's. The customer page's panel
    (``panel_section``) lists the rows the page read.
    """
    rows = [row_from_record(r) for r in customer_records(primary_id, live_only=True)]
    data = _panel(primary_id, rows, shown, start)
    db.session.rollback()
    return data


def panel_section(customer: CustomerView) -> dict:
    """The customer page's panel, from the live rows and blocked values the page read.

    Not read again: for a customer of 40,001 rows that was a second read of every row.
    """
    return _panel(customer.primary_id, customer.live_rows, PANEL_SHOWN, 0, customer.blocked_keys)


def _panel(
    primary_id: int,
    rows: Sequence[Row],
    shown: int,
    start: int,
    blocked: Collection[Key] | None = None,
) -> dict:
    """The panel's data from the customer's live ``rows`` (oldest first); ``blocked``: the
    blocked keys among theirs, read from the database when not given."""
    values: dict[Key, str] = {}
    for row in rows:
        if row.email_key:
            values.setdefault((EMAIL, row.email_key), row.email)
        if row.phone_key:
            values.setdefault((PHONE, row.phone_key), row.phone)
    listed = list(values.items())[start : start + shown]
    if blocked is None:
        blocked = blocked_keys(db.session.connection(), [key for key, _text in listed])
    return {
        "customer_id": primary_id,
        "values": [
            {"kind": kind, "key": key, "shown": text, "blocked": (kind, key) in blocked}
            for (kind, key), text in listed
        ],
        "values_total": len(values),
        "contacts": [
            {"id": row.id, "email": row.email, "phone": row.phone, "primary": row.is_primary}
            for row in rows[start : start + shown]
        ],
        "contacts_total": len(rows),
        "start": start,
        "page_size": VALUES_PAGE_SIZE,
    }
