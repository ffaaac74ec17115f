"""The machinery every reconciliation action shares: lock, read, recompute, write, audit.

Every action follows the identify service's locking discipline (read its
docstring): a write transaction (BEGIN IMMEDIATE on SQLite) that locks the
primary row of every customer it may change, ordered by id, re-reading until
the set of customers is stable. The set is closed over shared values and
stored evidence (``evidence``), so a customer that must merge with or split
from another is always locked and recomputed whole.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from ..audit import record
from ..database import chunks
from ..identity.evidence import bonds_holding
from ..identity.rules import (
    EMAIL,
    Key,
    MergeStep,
    Reconciliation,
    Relink,
    Row,
    reconcile,
)
from ..identity.service import blocked_keys, lock_customers, row_from_record
from ..models import PRIMARY, SECONDARY, Contact, Merge, utcnow
from ..text import counted

_c = Contact.__table__.c


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
    # A primary row this action deleted: its customer's next primary took it over.
    deleted_primary: int | None = None
    # Deleted rows a re-run relinked; the other actions leave it empty (their deleted rows
    # follow the live rows their entry shows).
    deleted_relinks: list[Relink] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.relinks or self.merges or self.added_row or self.deleted_relinks)

    def summary(self) -> str:
        """One sentence for the agent: what changed."""
        parts = []
        if self.added_row:
            parts.append(f"contact {self.added_row} added")
        if self.merges:
            parts.append(f"{counted(len(self.merges), 'customer')} merged")
        promoted = [r.row_id for r in self.relinks if r.after is None]
        # A promoted row of a customer whose primary row was not live (deleted
        # outside the app, or by this action) took that customer over; any other
        # split off a new one.
        heirs = [
            row
            for customer, rows in self.before.items()
            if customer not in rows or customer == self.deleted_primary
            for row in promoted
            if row in rows
        ]
        if heirs:
            ids = ", ".join(map(str, heirs))
            parts.append(
                f"contact {ids} became the primary"
                if len(heirs) == 1
                else f"contacts {ids} became primaries"
            )
        if len(promoted) > len(heirs):
            parts.append(f"{counted(len(promoted) - len(heirs), 'new customer')} split off")
        if self.relinks:
            parts.append(f"{counted(len(self.relinks), 'contact row')} relinked")
        if self.deleted_relinks:
            parts.append(f"{counted(len(self.deleted_relinks), 'deleted contact row')} relinked")
        return "; ".join(parts).capitalize() + "." if parts else "Nothing needed to change."


@dataclass
class View:
    """Every row of the locked customers, with what decides who belongs with whom."""

    rows: list[Row]
    deleted: list[Row]
    blocked: set[Key]
    bonds: list[frozenset[Key]]

    def plan(self) -> Reconciliation:
        """Who belongs with whom in this view, as the changes to make."""
        return reconcile(self.rows, self.blocked, self.bonds, self.deleted)


def holders(conn: Connection, keys: Iterable[Key]) -> set[int]:
    """The customers (primary ids) whose live rows hold one of ``keys``."""
    emails = sorted({key for kind, key in keys if kind == EMAIL})
    phones = sorted({key for kind, key in keys if kind != EMAIL})
    found: set[int] = set()
    for column, wanted in ((_c.email_key, emails), (_c.phone_key, phones)):
        for part in chunks(wanted):
            statement = select(_c.id, _c.linkedId).where(column.in_(part), _c.deletedAt.is_(None))
            found |= {linked or row_id for row_id, linked in conn.execute(statement)}
    return found


def read_view(conn: Connection, customer_ids: set[int]) -> tuple[View, set[int]]:
    """The rows of these customers and the customers the view says belong with them."""
    ids = sorted(customer_ids)
    records = conn.execute(
        select(*Contact.__table__.c).where(or_(_c.id.in_(ids), _c.linkedId.in_(ids)))
    ).all()
    live = [row_from_record(r) for r in records if r.deletedAt is None]
    deleted = [row_from_record(r) for r in records if r.deletedAt is not None]
    held = {key for row in live for key in row.identifiers()}
    bonds = bonds_holding(conn, held)
    keys = held | {k for b in bonds for k in b}
    blocked = blocked_keys(conn, keys)
    customers = {row.primary_id for row in live} | holders(conn, keys - blocked)
    return View(live, deleted, blocked, bonds), customers


# MariaDB estimates an IN list of eq_range_index_dive_limit (200) values or more from
# the index's statistics, and a database of many one-row customers makes linkedId's look
# useless: a list of 500 read all of a million rows, each time.
_DIVE_LIMIT = 199


def with_hanging(conn: Connection, view: View) -> View:
    """``view`` with the deleted rows that SQL run on the table (outside the app) left
    more than one hop from their customer's primary, under one of its rows.

    Those linked to one of its live secondaries, and those linked to one of its
    deleted rows, then to one of those, and so on down any chain of deleted rows;
    a row already found is not read again, so a cycle among them ends the walk.
    Read by the actions that repair links (a re-run, a whole-database run), after
    locking: every other action's rounds would pay one more read per 199 rows.
    Where nothing is chained, the walk's last round finds nothing: one read per
    199 deleted rows of the view, besides the one per 199 secondaries.
    """
    customers = {row.primary_id for row in view.rows}
    known = {row.id for row in view.deleted}
    found = list(view.deleted)
    under = {row.id for row in view.rows if row.linked_id not in (None, row.id)}
    # The rows linked to a customer's id were read with the view.
    under |= known - customers
    while under:
        new: list[Row] = []
        for part in chunks(sorted(under), _DIVE_LIMIT):
            hanging = conn.execute(
                select(*Contact.__table__.c).where(_c.linkedId.in_(part), _c.deletedAt.is_not(None))
            )
            for stored in hanging:
                if stored.id not in known:
                    known.add(stored.id)
                    new.append(row_from_record(stored))
        found += new
        under = {row.id for row in new}
    return View(view.rows, found, view.blocked, view.bonds)


def lock_view(
    conn: Connection, seeds: Iterable[int], holding: Collection[Key] = ()
) -> tuple[View, set[int]]:
    """Lock every customer that ``seeds`` may merge with or split into, and read them whole.

    ``holding``: keys whose holders are locked too, blocked or not, read again
    in every round: a customer split off by another agent after the caller
    first looked them up is found under the lock.
    """

    def read(held: frozenset[int]) -> tuple[tuple[View, set[int]], set[int]]:
        view, customers = read_view(conn, held)
        return (view, set(held)), held | customers | (holders(conn, holding) if holding else set())

    return lock_customers(conn, read, seeds)


def write_plan(conn: Connection, plan: Reconciliation, *, cause: str, actor: str) -> None:
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


def settle(
    conn: Connection, held: set[int], *, actor: str, cause: str
) -> tuple[View, Reconciliation]:
    """Re-read the locked customers, reconcile them and write the result."""
    view, customers = read_view(conn, held)
    if not customers <= held:
        # A write of this transaction reached a customer not locked yet.
        view, held = lock_view(conn, held | customers)
    plan = view.plan()
    write_plan(conn, plan, cause=cause, actor=actor)
    return view, plan


def home_of(plan: Reconciliation, rows: Sequence[Row], contact_id: int) -> int | None:
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


def outcome_of(
    action: str,
    customer_id: int | None,
    plan: Reconciliation,
    before_rows: Sequence[Row],
    involved: Collection[int],
) -> Outcome:
    """The outcome of an action from its reconciliation and the rows as they were.

    ``before_rows``: the live rows before the action (none it added; a row it
    deleted included). ``involved``: the customers the action is about; those
    it merges or splits are added. ``after`` shows each of them as it is now.
    """
    before = plan.customers_before(before_rows, involved)
    return Outcome(
        action=action,
        customer_id=customer_id,
        relinks=plan.relinks,
        merges=plan.merges,
        before=before,
        after=plan.customers_after(before),
    )


def audit(
    actor: str,
    outcome: Outcome,
    *,
    subject: str,
    reason: str | None = None,
    before: dict | None = None,
    after: dict | None = None,
) -> None:
    """Record an action in the audit log, in its transaction: customers before and after."""
    before = {"customers": outcome.before, **(before or {})}
    after = {"customers": outcome.after, **(after or {})}
    if outcome.deleted_relinks:
        before["deleted_contacts"], after["deleted_contacts"] = deleted_links(
            outcome.deleted_relinks
        )
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


def deleted_links(
    relinks: Iterable[Relink],
) -> tuple[dict[int, int | None], dict[int, int | None]]:
    """Relinked deleted rows for an audit entry's states: {row id: linkedId} before and after.

    A repair's audit entry lists them: its live rows may not have moved at all, and
    its ``customers`` (live rows only) would then read the same before and after.
    """
    ordered = sorted(relinks, key=lambda r: r.row_id)
    return {r.row_id: r.before for r in ordered}, {r.row_id: r.after for r in ordered}


def primary_of(conn: Connection, contact_id: int) -> int:
    """The customer (primary id) a live contact belongs to; NotFound otherwise."""
    found = conn.execute(
        select(_c.id, _c.linkedId).where(_c.id == contact_id, _c.deletedAt.is_(None))
    ).first()
    if found is None:
        raise NotFound(f"there is no contact {contact_id}")
    return found.linkedId or found.id


def live_customer_of(conn: Connection, contact_id: int) -> int:
    """``primary_of``, refusing a customer whose primary row is not a live primary.

    That is a customer whose primary was deleted by SQL outside the app:
    it must be regrouped (``reconcile_customer``) before it is linked to or
    merged, which need its primary. One statement reads both rows, so that a
    merge or delete committed in between (MariaDB reads at READ COMMITTED)
    cannot make a healthy customer look like such a one.
    """
    parent = Contact.__table__.alias("parent")
    found = conn.execute(
        select(_c.id, _c.linkedId, parent.c.id.label("live_primary"))
        .outerjoin(
            parent,
            and_(
                parent.c.id == func.coalesce(_c.linkedId, _c.id),
                parent.c.linkedId.is_(None),
                parent.c.deletedAt.is_(None),
            ),
        )
        .where(_c.id == contact_id, _c.deletedAt.is_(None))
    ).first()
    if found is None:
        raise NotFound(f"there is no contact {contact_id}")
    primary = found.linkedId or found.id
    if found.live_primary is None:
        raise ReconcileError(
            f"customer {primary} needs regrouping first: its primary row was deleted "
            "outside the dashboard"
        )
    return primary


def primary_in(view: View, contact_id: int) -> int:
    """The customer a live contact of the view belongs to; NotFound otherwise."""
    for row in view.rows:
        if row.id == contact_id:
            return row.primary_id
    raise NotFound(f"there is no contact {contact_id}")
