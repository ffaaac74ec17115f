"""Manual reconciliation: link, merge, block, unblock, delete and re-run, one transaction each.

Every action follows the identify service's locking discipline (read its
docstring): a write transaction (BEGIN IMMEDIATE on SQLite) that locks the
primary row of every customer it may change, ordered by id, re-reading until
the set of customers is stable. The set is closed over shared values and
stored evidence, so a customer that must merge with or split from another is
always locked and recomputed whole. Each action writes its change, the merges
it causes and an audit entry in the same transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from flask import current_app
from sqlalchemy import Connection, insert, or_, select, update

from ..audit import record
from ..dashboard.search import index_contact
from ..database import SQLITE_IMMEDIATE, Retry, run_write_transaction
from ..extensions import db
from ..identity.rules import (
    EMAIL,
    Customer,
    Key,
    MergeStep,
    Reconciliation,
    Relink,
    Row,
    Value,
    consolidate,
    evidence_keys,
    keys_detail,
    reconcile,
)
from ..identity.service import _lock_claims, _row, blocked_keys
from ..models import PRIMARY, SECONDARY, Contact, Identifier, Merge, utcnow
from .models import Bond

_c = Contact.__table__.c
_i = Identifier.__table__.c

T = TypeVar("T")

# Rounds of "lock what the last read found" before the transaction starts again.
_MAX_LOCK_ROUNDS = 16

AGENT = "agent"
RECONCILE = "reconcile"


class ReconcileError(ValueError):
    """An action the rules refuse; the message is for the agent."""


class NotFound(ReconcileError):
    """The contact or customer does not exist (or was deleted)."""


@dataclass
class Outcome:
    """What an action changed: rows relinked, merges, and the customers before and after."""

    action: str
    # The customer to show afterwards (the primary the action's subject now belongs to).
    customer_id: int | None
    relinks: list[Relink] = field(default_factory=list)
    merges: list[MergeStep] = field(default_factory=list)
    before: dict[int, list[int]] = field(default_factory=dict)
    after: dict[int, list[int]] = field(default_factory=dict)
    added_row: int | None = None

    @property
    def changed(self) -> bool:
        return bool(self.relinks or self.merges or self.added_row)

    def summary(self) -> str:
        """One sentence for the agent: what changed."""
        parts = []
        if self.added_row:
            parts.append(f"contact {self.added_row} added")
        if self.merges:
            parts.append(f"{len(self.merges)} customer(s) merged")
        promoted = [r.row_id for r in self.relinks if r.after is None]
        if promoted:
            parts.append(f"{len(promoted)} new customer(s) split off")
        if self.relinks:
            parts.append(f"{len(self.relinks)} contact row(s) relinked")
        return "; ".join(parts).capitalize() + "." if parts else "Nothing needed to change."


@dataclass
class _View:
    """Every row of the locked customers, with what decides who belongs with whom."""

    rows: list[Row]
    deleted: list[Row]
    blocked: set[Key]
    bonds: list[frozenset[Key]]

    def plan(self) -> Reconciliation:
        return reconcile(self.rows, self.blocked, self.bonds, self.deleted)


def _transaction(work: Callable[[Connection], T]) -> T:
    """Run ``work`` in a write transaction, again when it loses a lock race."""

    def attempt() -> T:
        return work(db.session.connection(execution_options={SQLITE_IMMEDIATE: True}))

    # End any read the caller left open, so that the write lock is taken up front.
    db.session.rollback()
    return run_write_transaction(attempt, current_app.config["IDENTIFY_MAX_ATTEMPTS"])


def _holders(conn: Connection, keys: Iterable[Key]) -> set[int]:
    """The customers (primary ids) whose live rows hold one of ``keys``."""
    emails = sorted({key for kind, key in keys if kind == EMAIL})
    phones = sorted({key for kind, key in keys if kind != EMAIL})
    found: set[int] = set()
    for column, wanted in ((_c.email_key, emails), (_c.phone_key, phones)):
        if wanted:
            statement = select(_c.id, _c.linkedId).where(column.in_(wanted), _c.deletedAt.is_(None))
            found |= {linked or row_id for row_id, linked in conn.execute(statement)}
    return found


def _evidence(conn: Connection, row_ids: Sequence[int]) -> list[frozenset[Key]]:
    """The bonds anchored on these rows: identify merges' request values and agents' bonds."""
    m = Merge.__table__.c
    details = conn.execute(
        select(m.detail).where(
            or_(m.survivor_id.in_(row_ids), m.absorbed_id.in_(row_ids)), m.detail.is_not(None)
        )
    ).scalars()
    b = Bond.__table__.c
    agents = conn.execute(select(b.detail).where(b.contact_id.in_(row_ids))).scalars()
    bonds = []
    for detail in [*details, *agents]:
        try:
            parsed = json.loads(detail)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            bonds.append(evidence_keys(parsed))
    return bonds


def _read_view(conn: Connection, customer_ids: set[int]) -> tuple[_View, set[int]]:
    """The rows of these customers and the customers the view says belong with them."""
    ids = sorted(customer_ids)
    records = conn.execute(
        select(*Contact.__table__.c).where(or_(_c.id.in_(ids), _c.linkedId.in_(ids)))
    ).all()
    live = [_row(r) for r in records if r.deletedAt is None]
    deleted = [_row(r) for r in records if r.deletedAt is not None]
    bonds = _evidence(conn, [r.id for r in records])
    keys = {key for row in live for key in row.identifiers()} | {k for b in bonds for k in b}
    blocked = blocked_keys(conn, keys)
    customers = {row.primary_id for row in live} | _holders(conn, keys - blocked)
    return _View(live, deleted, blocked, bonds), customers


def _lock_view(conn: Connection, seeds: Iterable[int]) -> tuple[_View, set[int]]:
    """Lock every customer that ``seeds`` may merge with or split into, and read them whole."""
    held: set[int] = set()
    wanted = set(seeds)
    for _ in range(_MAX_LOCK_ROUNDS):
        to_lock = sorted(wanted - held)
        if to_lock:
            conn.execute(select(_c.id).where(_c.id.in_(to_lock)).order_by(_c.id).with_for_update())
            held |= set(to_lock)
        view, customers = _read_view(conn, held)
        if customers <= held:
            return view, held
        wanted = held | customers
    raise Retry("the customers kept changing while being locked")


def _write(conn: Connection, plan: Reconciliation, *, cause: str, actor: str) -> None:
    """Apply a reconciliation: new links and precedences, and a merge row per merge."""
    now = utcnow()
    targets: dict[int | None, list[int]] = {}
    for relink in [*plan.relinks, *plan.deleted_relinks]:
        targets.setdefault(relink.after, []).append(relink.row_id)
    for after, ids in targets.items():
        conn.execute(
            update(Contact.__table__)
            .where(_c.id.in_(ids))
            .values(
                linkedId=after,
                linkPrecedence=PRIMARY if after is None else SECONDARY,
                updatedAt=now,
            )
        )
    if plan.merges:
        conn.execute(
            insert(Merge.__table__),
            [
                {
                    "survivor_id": step.survivor_id,
                    "absorbed_id": step.absorbed_id,
                    "rows_moved": step.rows_moved,
                    "cause": cause,
                    "actor": actor,
                    "detail": None,
                    "created_at": now,
                }
                for step in plan.merges
            ],
        )


def _settle(
    conn: Connection, held: set[int], *, actor: str, cause: str
) -> tuple[_View, Reconciliation]:
    """Re-read the locked customers, reconcile them and write the result."""
    view, customers = _read_view(conn, held)
    if not customers <= held:
        # A write of this transaction reached a customer not locked yet.
        view, held = _lock_view(conn, held | customers)
    plan = view.plan()
    _write(conn, plan, cause=cause, actor=actor)
    return view, plan


def _home(plan: Reconciliation, rows: Sequence[Row], contact_id: int) -> int | None:
    """The primary that ``contact_id``'s old customer's oldest live row now belongs to."""
    by_id = {row.id: row for row in rows}
    row = by_id.get(contact_id)
    owner = row.primary_id if row else contact_id
    members = sorted((r for r in rows if r.primary_id == owner), key=lambda r: (r.created_at, r.id))
    if not members:
        return None
    for group in plan.groups:
        if members[0].id in group:
            return group[0]
    return None


def _outcome(
    action: str, customer_id: int | None, plan: Reconciliation, before_rows: Sequence[Row]
) -> Outcome:
    return Outcome(
        action=action,
        customer_id=customer_id,
        relinks=plan.relinks,
        merges=plan.merges,
        before=plan.customers_before(before_rows),
        after=plan.customers_after(),
    )


def _audit(actor: str, outcome: Outcome, *, subject: str, reason: str | None = None, **extra):
    before = {"customers": outcome.before, **extra.get("before", {})}
    after = {"customers": outcome.after, **extra.get("after", {})}
    if outcome.added_row:
        after["added_contact"] = outcome.added_row
    record(
        actor,
        outcome.action,
        customer_id=outcome.customer_id,
        subject=subject,
        reason=reason,
        before=before,
        after=after,
    )


def _primary_of(conn: Connection, contact_id: int) -> int:
    """The customer (primary id) a live contact belongs to; NotFound otherwise."""
    found = conn.execute(
        select(_c.id, _c.linkedId).where(_c.id == contact_id, _c.deletedAt.is_(None))
    ).first()
    if found is None:
        raise NotFound(f"there is no contact {contact_id}")
    return found.linkedId or found.id


def _primary_in(view: _View, contact_id: int) -> int:
    for row in view.rows:
        if row.id == contact_id:
            return row.primary_id
    raise NotFound(f"there is no contact {contact_id}")


def reconcile_customer(contact_id: int, actor: str) -> Outcome:
    """Recompute one customer (and any it must merge with) from its rows; fix links."""

    def work(conn: Connection) -> Outcome:
        view, _ = _lock_view(conn, {_primary_of(conn, contact_id)})
        primary = _primary_in(view, contact_id)
        plan = view.plan()
        _write(conn, plan, cause=RECONCILE, actor=actor)
        outcome = _outcome(RECONCILE, _home(plan, view.rows, primary), plan, view.rows)
        _audit(actor, outcome, subject=f"customer {primary}")
        db.session.commit()
        return outcome

    return _transaction(work)


def customer_snapshot(contact_id: int) -> Customer:
    """The customer a contact belongs to, consolidated (read-only)."""
    conn = db.session.connection()
    try:
        primary = _primary_of(conn, contact_id)
        records = conn.execute(
            select(*Contact.__table__.c).where(
                or_(_c.id == primary, _c.linkedId == primary), _c.deletedAt.is_(None)
            )
        )
        return consolidate(primary, [_row(r) for r in records])
    finally:
        db.session.rollback()


def _bond(conn: Connection, anchors: Iterable[int], keys: Iterable[Key], *, cause: str, actor: str):
    detail = json.dumps(keys_detail(keys))
    now = utcnow()
    conn.execute(
        insert(Bond.__table__),
        [
            {"contact_id": a, "detail": detail, "cause": cause, "actor": actor, "created_at": now}
            for a in sorted(set(anchors))
        ],
    )


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
        _lock_claims(conn, values)
        wanted = {(v.kind, v.key) for v in values}
        refused = blocked_keys(conn, wanted)
        if refused:
            shown = ", ".join(key for _, key in sorted(refused))
            raise ReconcileError(f"{shown} is blocked: a blocked value links nothing")
        seeds = {_primary_of(conn, contact_id)} | _holders(conn, wanted)
        view, held = _lock_view(conn, seeds)
        primary = _primary_in(view, contact_id)
        mine = {k for row in view.rows if row.primary_id == primary for k in row.identifiers()}
        if wanted <= mine:
            raise ReconcileError("this customer already has these values")
        known = {k for row in view.rows for k in row.identifiers()}
        added = None
        if not wanted <= known:
            email = next((v for v in values if v.kind == EMAIL), None)
            phone = next((v for v in values if v.kind != EMAIL), None)
            now = utcnow()
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
        _bond(conn, [primary], wanted | set(anchor.identifiers()), cause="link", actor=actor)
        view, plan = _settle(conn, held, actor=actor, cause=AGENT)
        outcome = _outcome("link", _home(plan, view.rows, primary), plan, view.rows)
        outcome.added_row = added
        shown = ", ".join(v.stored for v in values)
        _audit(actor, outcome, subject=f"customer {primary}: {shown}")
        db.session.commit()
        return outcome

    return _transaction(work)


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
        first, second = _primary_of(conn, contact_id), _primary_of(conn, other_id)
        if first == second:
            raise ReconcileError("these contacts already belong to one customer")
        records = conn.execute(
            select(*Contact.__table__.c).where(
                or_(_c.id.in_([first, second]), _c.linkedId.in_([first, second])),
                _c.deletedAt.is_(None),
            )
        )
        rows = [_row(r) for r in records]
    finally:
        db.session.rollback()
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
        seeds = {_primary_of(conn, contact_id), _primary_of(conn, other_id)}
        view, held = _lock_view(conn, seeds)
        first, second = _primary_in(view, contact_id), _primary_in(view, other_id)
        if first == second:
            raise ReconcileError("these contacts already belong to one customer")
        by_id = {row.id: row for row in view.rows}
        keys = set(by_id[first].identifiers()) | set(by_id[second].identifiers())
        _bond(conn, [first, second], keys, cause="merge", actor=actor)
        view, plan = _settle(conn, held, actor=actor, cause=AGENT)
        home = _home(plan, view.rows, first)
        if home is None or home != _home(plan, view.rows, second):
            raise ReconcileError("these customers share no value that is not blocked")
        outcome = _outcome("merge", home, plan, view.rows)
        _audit(actor, outcome, subject=f"customers {first} and {second}")
        db.session.commit()
        return outcome

    return _transaction(work)


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
        _lock_claims(conn, [value])
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
        holders = _holders(conn, [(value.kind, value.key)])
        outcome = Outcome(action=action, customer_id=None)
        if holders:
            view, _ = _lock_view(conn, holders)
            plan = view.plan()
            _write(conn, plan, cause=AGENT, actor=actor)
            oldest = min(holders)
            outcome = _outcome(action, _home(plan, view.rows, oldest), plan, view.rows)
        _audit(
            actor,
            outcome,
            subject=f"{value.kind} {value.key}",
            reason=reason if blocked else claim.blocked_reason,
            before=before_state,
            after=state,
        )
        db.session.commit()
        return outcome

    return _transaction(work)


def blocked_identifiers() -> list[Identifier]:
    """Every blocked value, most recently blocked first."""
    return list(
        db.session.scalars(
            select(Identifier)
            .where(Identifier.blocked_at.is_not(None))
            .order_by(Identifier.blocked_at.desc(), Identifier.id.desc())
        )
    )


def delete_contact(contact_id: int, actor: str, reason: str | None = None) -> Outcome:
    """Soft-delete a contact row; its customer is recomputed and may split.

    When the row was the primary, the oldest remaining row of its group
    becomes the primary.
    """

    def work(conn: Connection) -> Outcome:
        view, held = _lock_view(conn, {_primary_of(conn, contact_id)})
        primary = _primary_in(view, contact_id)
        before_rows = view.rows
        conn.execute(
            update(Contact.__table__)
            .where(_c.id == contact_id)
            .values(deletedAt=utcnow(), updatedAt=utcnow())
        )
        view, plan = _settle(conn, held, actor=actor, cause=AGENT)
        # None when the customer's last live row was the one deleted.
        outcome = _outcome("delete", _home(plan, view.rows, primary), plan, view.rows)
        outcome.before[primary] = sorted(r.id for r in before_rows if r.primary_id == primary)
        _audit(actor, outcome, subject=f"contact {contact_id}", reason=reason)
        db.session.commit()
        return outcome

    return _transaction(work)
