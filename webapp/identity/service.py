"""The identify service: load the customers a request touches, apply the rules, commit.

Concurrency design (docs/identity.md has the long form):

* Blocked values are dropped first (one lookup on the claim rows' unique
  index): they take no part in matching and are never stored; a request
  left with no value is refused (BlockedValues). The write path checks again
  under the claim locks, which blocking a value takes as well.
* A read-only pass answers most requests: one statement loads every live row
  of every customer sharing a key with the request, and when the rules say
  nothing is new, the answer is built from that consistent snapshot with no
  lock taken and nothing written.
* Otherwise a write transaction runs. On SQLite it begins IMMEDIATE, which
  serialises writers across processes. On MySQL/MariaDB it runs at READ
  COMMITTED and locks, in order: the ``identifier`` claim row of every request
  value (inserting the claims that do not exist; the unique key makes two
  concurrent inserts of one value collide), then the primary row of every
  customer touched, re-reading until the set of primaries is stable. Every
  writer that changes a customer holds its primary's lock, so merges and new
  rows never interleave. Deadlocks, lock timeouts and colliding claims roll
  back and run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Sequence
from contextlib import suppress
from dataclasses import replace
from functools import lru_cache
from typing import TypeVar

from flask import current_app
from sqlalchemy import (
    Boolean,
    Connection,
    Dialect,
    and_,
    bindparam,
    exists,
    func,
    insert,
    null,
    or_,
    select,
    type_coerce,
    union,
    union_all,
    update,
)
from sqlalchemy.exc import DBAPIError

from .. import audit
from ..database import (
    SQLITE_IMMEDIATE,
    Contention,
    DriverQuery,
    Retry,
    chunks,
    driver_query,
    driver_rows,
    run_write_transaction,
)
from ..extensions import db
from ..models import PRIMARY, SECONDARY, Contact, Identifier, Merge, utcnow
from .evidence import add_bond
from .rules import (
    EMAIL,
    Customer,
    Key,
    OrphanedCustomers,
    Plan,
    Row,
    Value,
    consolidate,
    joining_time,
    keys_detail,
    orphaned_customers,
    plan_identify,
)
from .search_index import index_contact

_c = Contact.__table__.c

# Rounds of "lock what the last read relied on" before the transaction starts again.
_MAX_LOCK_ROUNDS = 16

T = TypeVar("T")

# Built once: the hot path binds parameters to them and never rebuilds them
# (SQLAlchemy keeps a statement's cache key on the statement, so a fresh
# insert() would cost its key again on every request).
_INSERT_CONTACT = insert(Contact.__table__)
_INSERT_CLAIMS = insert(Identifier.__table__)


def row_from_record(record) -> Row:
    """A domain Row from a Contact, or from a result row with ROW_COLUMNS."""
    return Row(
        id=record.id,
        email=record.email,
        phone=record.phoneNumber,
        email_key=record.email_key,
        phone_key=record.phone_key,
        linked_id=record.linkedId,
        created_at=record.createdAt,
    )


ROW_COLUMNS = (
    _c.id,
    _c.email,
    _c.phoneNumber,
    _c.email_key,
    _c.phone_key,
    _c.linkedId,
    _c.createdAt,
)


# The rows that hold a request's value; the customer's rows are joined to them.
_holders = Contact.__table__.alias("holder")


def _group_branches(kinds: tuple[str, ...], leading: Sequence = ()) -> list:
    """SELECTs whose rows together are every live row of every customer holding a value.

    A common table expression names the customers: for each value (bound as
    ``v0``, ``v1``, ...), the rows holding it are found through its key's
    index, and each one's customer is its ``linkedId``, or itself when it is
    a primary; UNION keeps each customer once. Two SELECTs then bring those
    customers' primaries by id and their secondaries through the ``linkedId``
    index. Joining each holder to its customer's rows directly would bring
    the customer once per holder: a customer whose N rows share a phone would
    read N x N rows. Each row comes once while links are one hop; callers
    still keep the first of each id (``_distinct``), as a table damaged by
    hand can name a row twice. ``leading`` columns go before ROW_COLUMNS.
    """
    h = _holders.c
    holding = []
    for position, kind in enumerate(kinds):
        key = h.email_key if kind == EMAIL else h.phone_key
        holding.append(
            select(func.coalesce(h.linkedId, h.id).label("customer_id")).where(
                key == bindparam(f"v{position}"), h.deletedAt.is_(None)
            )
        )
    customers = (union(*holding) if len(holding) > 1 else holding[0].distinct()).cte("customer")
    return [
        select(*leading, *ROW_COLUMNS)
        .select_from(customers.join(Contact.__table__, reach == customers.c.customer_id))
        .where(_c.deletedAt.is_(None))
        for reach in (_c.id, _c.linkedId)
    ]


@lru_cache(maxsize=64)
def _group_statement(kinds: tuple[str, ...]):
    """One statement: every live row of every customer holding one of the values.

    Built once per shape of request (the kinds of its values), so the hot path
    neither builds nor compiles SQL. Rows may repeat (``_distinct``).
    """
    return union_all(*_group_branches(kinds))


def _distinct(records: Iterable[Sequence]) -> list[Row]:
    """Rows from driver records holding ROW_COLUMNS (Row's fields, in order), each contact once."""
    rows: dict[int, Row] = {}
    for record in records:
        if record[0] not in rows:
            rows[record[0]] = Row(*record)
    return list(rows.values())


def _bound(values: Sequence[Value]) -> tuple[tuple[str, ...], dict[str, str]]:
    return tuple(v.kind for v in values), {f"v{i}": v.key for i, v in enumerate(values)}


@lru_cache(maxsize=64)
def _group_query(dialect: Dialect, kinds: tuple[str, ...]) -> DriverQuery:
    return driver_query(dialect, _group_statement(kinds))


def _load_rows(conn: Connection, values: Sequence[Value]) -> list[Row]:
    kinds, params = _bound(values)
    return _distinct(driver_rows(conn, _group_query(conn.dialect, kinds), params))


def load_customer_rows(conn: Connection, values: Sequence[Value]) -> list[Row]:
    """Every live row of every customer holding one of ``values`` (one consistent read)."""
    return _load_rows(conn, values)


class BlockedValues(ValueError):
    """Every value of a request is blocked, so there is nothing to identify by."""

    def __init__(self, values: Sequence[Value]):
        super().__init__("every value of the request is blocked")
        self.values = list(values)


def _pairs(count: int):
    """``count`` (kind, key) equality pairs, bound as ``k0``/``v0``, ``k1``/``v1``, ...

    SQLite searches its unique index for each pair, where it would scan the
    whole table for a row-value IN list.
    """
    c = Identifier.__table__.c
    return or_(
        *(and_(c.kind == bindparam(f"k{i}"), c.key == bindparam(f"v{i}")) for i in range(count))
    )


def _pair_params(pairs: Sequence[Key]) -> dict[str, str]:
    params: dict[str, str] = {}
    for i, (kind, key) in enumerate(pairs):
        params[f"k{i}"] = kind
        params[f"v{i}"] = key
    return params


def blocked_keys(conn: Connection, keys: Iterable[Key]) -> set[Key]:
    """Which of ``keys`` (any number) are blocked, by ``kind = ? AND key IN (...)`` lookups."""
    c = Identifier.__table__.c
    found: set[Key] = set()
    for kind, wanted in keys_detail(keys).items():
        for part in chunks(wanted):
            statement = select(c.kind, c.key).where(
                c.kind == kind, c.key.in_(part), c.blocked_at.is_not(None)
            )
            found |= {(k, v) for k, v in conn.execute(statement)}
    return found


def _unblocked(values: Sequence[Value], blocked: set[Key]) -> list[Value]:
    """The values that are not blocked; BlockedValues when none is left.

    A blocked value takes no part in matching and is never stored.
    """
    kept = [v for v in values if (v.kind, v.key) not in blocked]
    if not kept:
        raise BlockedValues(values)
    return kept


@lru_cache(maxsize=64)
def _read_statement(kinds: tuple[str, ...]):
    """One statement for the read pass: which values are blocked, and the rows they reach.

    The group's SELECTs (``_group_branches``) with a null flag per value in
    front, and last one row with no contact whose flags (``b0``, ``b1``, ...)
    say whether value *i* is blocked: one statement, so one snapshot for both
    questions, and the answer always holds the flags row.
    """
    c = Identifier.__table__.c
    no_flags = [type_coerce(null(), Boolean).label(f"b{i}") for i in range(len(kinds))]
    flags = select(
        *(
            exists()
            .where(c.kind == kind, c.key == bindparam(f"v{i}"), c.blocked_at.is_not(None))
            .label(f"b{i}")
            for i, kind in enumerate(kinds)
        ),
        *(type_coerce(null(), column.type).label(column.name) for column in ROW_COLUMNS),
    )
    # The group's SELECTs first: a compound statement's column types are its first SELECT's.
    return union_all(*_group_branches(kinds, leading=no_flags), flags)


def _read_pass(values: Sequence[Value]) -> tuple[list[Value], list[Row]]:
    """The unblocked values and the rows of the customers they touch, without locks.

    Runs on a connection of its own (no session state; closing it ends the
    read), straight on the driver, so no BEGIN is sent: on SQLite the one
    statement reads in a snapshot of its own. A pooled connection the server
    has dropped is discarded, and the read runs once more on a fresh one.
    """
    try:
        return _read(values)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return _read(values)


@lru_cache(maxsize=64)
def _read_query(dialect: Dialect, kinds: tuple[str, ...]) -> DriverQuery:
    return driver_query(dialect, _read_statement(kinds))


def _read(values: Sequence[Value]) -> tuple[list[Value], list[Row]]:
    kinds, params = _bound(values)
    count = len(values)
    with db.engine.connect() as conn:
        records = driver_rows(conn, _read_query(conn.dialect, kinds), params)
        flags = next(r[:count] for r in records if r[count] is None)
        if not any(flags):
            return list(values), _distinct(r[count:] for r in records if r[count] is not None)
        # Rare: a blocked value takes no part in matching; read again without it.
        kept = [value for value, blocked in zip(values, flags, strict=True) if not blocked]
        if not kept:
            raise BlockedValues(values)
        return kept, _load_rows(conn, kept)


def identify(
    values: Sequence[Value],
    *,
    source: str = "checkout",
    actor: str | None = None,
    created_reason: str | None = None,
) -> Customer:
    """Link ``values`` into the customer they belong to, creating or merging as needed.

    Runs and commits its own transactions: call it before, not inside, a
    transaction of your own (uncommitted work in ``db.session`` is rolled back).
    With an ``actor`` and a ``created_reason``, a customer this call creates is
    audited as created, in the same transaction; an existing one is not.
    """
    for _ in range(_MAX_REGROUPS):
        kept, rows = _read_pass(values)
        try:
            plan = plan_identify(kept, rows)
            break
        except OrphanedCustomers as exc:
            _regroup(rows, exc.customer_ids, actor or source)
    else:
        raise Contention("the customers kept losing their primary rows")
    values = kept
    if not plan.writes:
        return consolidate(plan.survivor_id, rows)
    # The write runs on a connection of its own; a transaction the caller left
    # open in the session could hold the very locks it needs (on SQLite, the
    # database's write lock), so it ends here.
    db.session.rollback()
    # The customers the read pass found: locked before the first read under
    # lock, so that one read usually suffices (MySQL/MariaDB).
    expected = [] if plan.survivor_id is None else [plan.survivor_id, *plan.absorbed]
    return run_write_transaction(
        lambda: _identify_locked(values, expected, source, actor, created_reason),
        current_app.config["IDENTIFY_MAX_ATTEMPTS"],
    )


@lru_cache(maxsize=64)
def _claims_query(dialect: Dialect, count: int) -> DriverQuery:
    """Lock ``count`` bound claim rows, in key order, and say which are blocked."""
    c = Identifier.__table__.c
    statement = (
        select(c.kind, c.key, c.blocked_at)
        .where(_pairs(count))
        .order_by(c.kind, c.key)
        .with_for_update()
    )
    return driver_query(dialect, statement)


def lock_claims(conn: Connection, values: Sequence[Value]) -> set[Key]:
    """Hold the claim row of every value, creating the ones never seen before.

    Returns the values' keys that are blocked, as read under the locks (a
    value is blocked and unblocked under its claim lock too).
    """
    return lock_keys(conn, [(v.kind, v.key) for v in values])


def lock_keys(conn: Connection, keys: Iterable[Key]) -> set[Key]:
    """``lock_claims`` by (kind, key) pairs."""
    if not conn.in_transaction():
        # The claims are read straight on the driver, which begins nothing itself.
        raise RuntimeError("lock_claims needs a transaction that has begun")
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    query = _claims_query(conn.dialect, len(wanted))
    held = {
        (k, key): blocked_at
        for k, key, blocked_at in driver_rows(conn, query, _pair_params(wanted))
    }
    fresh = [
        {"kind": k, "key": key, "created_at": utcnow()} for k, key in wanted if (k, key) not in held
    ]
    if fresh:
        # A concurrent insert of the same value raises a duplicate-key error,
        # and the whole transaction runs again (database.is_retryable).
        conn.execute(_INSERT_CLAIMS, fresh)
    return {key for key, blocked_at in held.items() if blocked_at is not None}


def lock_customers(
    conn: Connection,
    read: Callable[[frozenset[int]], tuple[T, Collection[int]]],
    seeds: Iterable[int] = (),
) -> T:
    """Lock the primary rows a read relies on, reading again until it relies on no more.

    ``read(held)`` returns its result and the primary ids it relied on; it
    runs after ``seeds`` are locked, then again after each round of locks,
    until every id it relied on was already held while it ran. A customer can
    be absorbed, split or deleted between a read and a lock, which is why one
    read is never enough. Rows are locked in id order within a round.

    Every writer that changes a customer, in every area, holds its primary's
    lock, so what the final read saw stays true until commit. On SQLite
    BEGIN IMMEDIATE has already shut out every other writer: no lock is sent,
    and the rounds only let a read widen to what it relies on.
    """
    lock = conn.dialect.name != "sqlite"
    held: set[int] = set()
    wanted: set[int] = set(seeds)
    for _ in range(_MAX_LOCK_ROUNDS):
        missing = sorted(wanted - held)
        if missing:
            if lock:
                conn.execute(
                    select(_c.id).where(_c.id.in_(missing)).order_by(_c.id).with_for_update()
                )
            held.update(missing)
        result, relied_on = read(frozenset(held))
        wanted = set(relied_on)
        if wanted <= held:
            return result
    raise Retry("the customers kept changing while being locked")


# Rounds of "regroup a customer whose primary was deleted outside the app" per request.
_MAX_REGROUPS = 3


def _regroup(rows: Sequence[Row], orphaned: Sequence[int], actor: str) -> None:
    """Regroup customers whose primary row was deleted by SQL run on the table by hand.

    Deleted rows take no part (the task's rule), so each such customer's live
    rows are reconciled as the dashboard's delete would have left them: the
    oldest becomes the primary. Reconciliation does it, and audits it.
    """
    # Reconciliation builds on this module: imported here, where it is needed.
    from ..reconcile.core import NotFound
    from ..reconcile.service import reconcile_customer

    for primary_id in orphaned:
        member = next(row for row in rows if row.primary_id == primary_id)
        # NotFound: that row was deleted meanwhile too; the next read says what is left.
        with suppress(NotFound):
            reconcile_customer(member.id, actor=actor)


def _locked_rows(
    conn: Connection, values: Sequence[Value], expected: Iterable[int] = ()
) -> list[Row]:
    """Every live row of every customer the values touch, those customers locked.

    ``expected``: primary ids the caller read earlier, locked before the first
    read (a guess: whatever the read then relies on is locked too).
    """
    if conn.dialect.name == "sqlite":
        # BEGIN IMMEDIATE already shuts out every other writer: what is read stays.
        return _load_rows(conn, values)

    def read(held: frozenset[int]) -> tuple[list[Row], set[int]]:
        rows = _load_rows(conn, values)
        primaries = {row.primary_id for row in rows}
        if primaries <= held and orphaned_customers(rows):
            # Locked, yet a primary is missing: the customer changed shape; start again.
            raise Retry("a locked customer's rows are incomplete")
        return rows, primaries

    return lock_customers(conn, read, seeds=expected)


def _identify_locked(
    values: Sequence[Value],
    expected: Sequence[int],
    source: str,
    actor: str | None,
    created_reason: str | None,
) -> Customer:
    # A connection of its own, as the read pass: the ORM session has nothing to add here.
    options = {SQLITE_IMMEDIATE: True}
    with db.engine.connect().execution_options(**options) as conn, conn.begin():
        # Blocked values are read again under the claim locks, which blocking takes too.
        values = _unblocked(values, lock_claims(conn, values))
        rows = _locked_rows(conn, values, expected)
        try:
            plan = plan_identify(values, rows)
        except OrphanedCustomers:
            # A primary deleted by hand since the read pass: start again.
            raise Retry("a customer lost its primary row") from None
        primary_id, rows = _apply(conn, plan, rows, values, source=source, actor=actor)
        customer = consolidate(primary_id, rows)
        if actor and created_reason and plan.new_row and plan.new_row.linked_id is None:
            audit.record_on(
                conn,
                actor,
                "create",
                customer_id=primary_id,
                subject=", ".join(f"{value.kind} {value.stored}" for value in values),
                reason=created_reason,
                after={"emails": customer.emails, "phoneNumbers": customer.phone_numbers},
            )
    return customer


def _apply(
    conn: Connection,
    plan: Plan,
    rows: Sequence[Row],
    values: Sequence[Value],
    *,
    source: str,
    actor: str | None,
) -> tuple[int, list[Row]]:
    """Write a plan: absorb the other primaries, then add the new row.

    Returns the customer's primary id and its rows as they now are, so the
    answer needs no further read.
    """
    now = utcnow()
    survivor = plan.survivor_id
    absorbed_ids = set(plan.absorbed)
    after = [
        replace(row, linked_id=survivor) if row.primary_id in absorbed_ids else row for row in rows
    ]
    if plan.absorbed:
        # Deleted rows move too, so that what hangs off them (engagements,
        # vouchers, history) still reaches the customer in one hop.
        conn.execute(
            update(Contact.__table__)
            .where(or_(_c.id.in_(plan.absorbed), _c.linkedId.in_(plan.absorbed)))
            .values(linkedId=survivor, linkPrecedence=SECONDARY, updatedAt=now)
        )
        detail = json.dumps({v.kind: v.stored for v in values})
        conn.execute(
            insert(Merge.__table__),
            [
                {
                    "survivor_id": survivor,
                    "absorbed_id": absorbed,
                    "rows_moved": sum(1 for r in rows if r.primary_id == absorbed),
                    "cause": source,
                    "actor": actor,
                    "detail": detail,
                    "created_at": now,
                }
                for absorbed in plan.absorbed
            ],
        )
        # The request's values may sit in no one row: the bond keeps them together.
        add_bond(
            conn,
            [(v.kind, v.key) for v in values],
            contact_id=survivor,
            cause=source,
            actor=actor or source,
        )
    if plan.new_row is None:
        return survivor, after
    new = plan.new_row
    created = now if new.linked_id is None else joining_time(now, after, survivor)
    result = conn.execute(
        _INSERT_CONTACT,
        {
            "email": new.email,
            "phoneNumber": new.phone,
            "email_key": new.email_key,
            "phone_key": new.phone_key,
            "linkedId": new.linked_id,
            "linkPrecedence": PRIMARY if new.linked_id is None else SECONDARY,
            "createdAt": created,
            "updatedAt": now,
            "source": source,
        },
    )
    new_id = result.inserted_primary_key[0]
    index_contact(conn, new_id, new.email_key, new.phone_key)
    after.append(
        Row(
            id=new_id,
            email=new.email,
            phone=new.phone,
            email_key=new.email_key,
            phone_key=new.phone_key,
            linked_id=new.linked_id,
            created_at=created,
        )
    )
    return (survivor if new.linked_id is not None else new_id), after


def customer_rows(conn: Connection, primary_id: int) -> list[Row]:
    """Every live row of one customer, by its primary id."""
    records = conn.execute(
        select(*ROW_COLUMNS).where(
            or_(_c.id == primary_id, _c.linkedId == primary_id), _c.deletedAt.is_(None)
        )
    )
    return [row_from_record(r) for r in records]
