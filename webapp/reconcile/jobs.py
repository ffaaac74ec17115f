"""Whole-database reconciliation: short batched transactions, progress kept in a job row.

A run walks the primaries in id order, a batch at a time; each batch is one
write transaction that locks its customers (and whatever they must merge
with) exactly as the per-customer action does, so checkout traffic only ever
waits for one batch. Progress lives in the ``reconcile_job`` row, written in
the batch's own transaction, so any worker on any box shows the same numbers.
The dashboard starts a run as a separate process (``flask reconcile --job
ID``), so no web worker is tied up for its duration.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from flask import current_app
from sqlalchemy import Connection, and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError

from ..audit import record
from ..database import Contention, chunks, describe, error_kind, write_transaction
from ..extensions import db
from ..identity.rules import Partition, Reconciliation, Relink
from ..models import Contact, utcnow
from .core import (
    RECONCILE,
    NotFound,
    ReconcileError,
    deleted_links,
    lock_view,
    with_hanging,
    write_plan,
)
from .models import DONE, FAILED, QUEUED, RUNNING, STALE_AFTER, ReconcileJob

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent.parent

_c = Contact.__table__.c
_j = ReconcileJob.__table__.c


class AlreadyRunning(ReconcileError):
    """Another whole-database run is queued or running."""


@dataclass(frozen=True)
class Batch:
    """One batch's result: how many customers it checked and what it changed."""

    checked: int
    last_id: int
    customers_changed: int
    rows_changed: int


def reconcile_batch(
    conn: Connection, job_id: int, after_id: int, size: int, actor: str
) -> Batch | None:
    """Reconcile the next ``size`` customers after ``after_id`` and note progress; commits.

    None when nothing is left after ``after_id``.
    """
    stretch = next_stretch(conn, after_id, size)
    if stretch is None:
        db.session.rollback()
        return None
    ids = stretch.customers
    seeds = stray_seeds(conn, stretch.strays) if stretch.strays else set()
    view, _ = lock_view(conn, [*ids, *seeds])
    plan = with_hanging(conn, view).plan()
    write_plan(conn, plan, cause=RECONCILE, actor=actor)
    after = plan.customers_after()
    for primary, was, now in changes(plan, plan.customers_before(view.rows)):
        record(
            actor,
            RECONCILE,
            customer_id=primary,
            subject=f"reconciliation run {job_id}",
            before=was,
            after=now,
        )
    rows_changed = len(plan.relinks) + len(plan.deleted_relinks)
    conn.execute(
        update(ReconcileJob.__table__)
        .where(_j.id == job_id)
        .values(
            processed=_j.processed + len(ids),
            cursor=stretch.last,
            customers_changed=_j.customers_changed + len(after),
            rows_changed=_j.rows_changed + rows_changed,
            heartbeat_at=utcnow(),
        )
    )
    db.session.commit()
    return Batch(len(ids), stretch.last, len(after), rows_changed)


def changes(plan: Reconciliation, before: dict[int, list[int]]) -> list[tuple[int, dict, dict]]:
    """A batch's changes as an agent's action records one: (customer, before, after).

    One per set of customers that changed together (a merge joins them, a split
    draws its parts from them), filed under its oldest changed customer:
    ``before`` those customers (``customers_before``), ``after`` every customer
    now holding a row of theirs, what a split one kept included. Not one per
    changed customer: a customer split into 2,000 would write 2,000 entries
    each naming all 2,000, and another changed customer of the batch is no part
    of this one's entry. The deleted rows relinked to one of the set's customers
    are listed under ``deleted_contacts`` ({row id: linkedId}, ``deleted_links``):
    a customer whose only change is a deleted row put back one hop from its
    primary gets an entry too, and without them it would read the same before
    and after. Deleted rows relinked to no live customer (one SQL linked to
    itself becomes a deleted primary of its own) get an entry per deleted row
    that is their customer now, filed under it, with ``deleted_contacts`` alone.
    """
    owner = {row: customer for customer, rows in before.items() for row in rows}
    together = Partition(before)
    holding = [(group, {owner[row] for row in group if row in owner}) for group in plan.groups]
    holding = [(group, owners) for group, owners in holding if owners]
    for _, owners in holding:
        first, *others = owners
        for other in others:
            together.join(first, other)
    relinked = {r.row_id for r in plan.relinks}
    homes = {r.after for r in plan.deleted_relinks}
    filed: dict[int, int] = {}
    was: dict[int, dict[int, list[int]]] = {}
    now: dict[int, dict[int, list[int]]] = {}
    root_of: dict[int, int] = {}
    for group, owners in holding:  # oldest group first
        root = together.find(next(iter(owners)))
        root_of[group[0]] = root
        if relinked.intersection(group) or group[0] in homes:
            filed.setdefault(root, group[0])
        now.setdefault(root, {})[group[0]] = group
        for customer in owners:
            was.setdefault(root, {})[customer] = before[customer]
    deleted: dict[int, list[Relink]] = {}
    # Deleted rows of no live customer, by the deleted row that is their customer now.
    unowned: dict[int, list[Relink]] = {}
    for relink in plan.deleted_relinks:
        if relink.after in root_of:
            deleted.setdefault(root_of[relink.after], []).append(relink)
        else:
            customer = relink.row_id if relink.after is None else relink.after
            unowned.setdefault(customer, []).append(relink)
    entries = []
    for root in now:
        before_state = {"customers": dict(sorted(was[root].items()))}
        after_state = {"customers": dict(sorted(now[root].items()))}
        if root in deleted:
            before_state["deleted_contacts"], after_state["deleted_contacts"] = deleted_links(
                deleted[root]
            )
        entries.append((filed[root], before_state, after_state))
    for customer, relinks in sorted(unowned.items()):
        was_linked, now_linked = deleted_links(relinks)
        entries.append(
            (customer, {"deleted_contacts": was_linked}, {"deleted_contacts": now_linked})
        )
    return entries


def _linked_between(after_id: int, below: int | None) -> list:
    """Rows linked to an id in (after_id, below): one range of the linkedId index."""
    conditions = [_c.linkedId > after_id]
    if below is not None:
        conditions.append(_c.linkedId < below)
    return conditions


# Built once: an alias's columns cost more to set up (0.4 ms) than a batch's search
# takes to run on SQLite (0.7 ms, in a run over a million rows).
_parent = Contact.__table__.alias("parent")
_deleted_parent = Contact.__table__.alias("deleted_parent")

# A live row whose linkedId is not a live primary. Deleted rows take no part, but a
# primary soft-deleted by SQL run on the table (outside the app) leaves its live rows
# pointing at it: a customer whose id is a deleted row. SQL can also link a row to a
# secondary (two hops) or to itself; when the row shares no value with the one it
# points at, no customer's rows lead to it. The walk must reach those too.
_ORPHAN = and_(
    _c.deletedAt.is_(None),
    ~exists().where(
        _parent.c.id == _c.linkedId,
        _parent.c.id != _c.id,
        _parent.c.linkedId.is_(None),
        _parent.c.deletedAt.is_(None),
    ),
)

# A deleted row that no customer's rows may lead to and that is not where it belongs:
# SQL linked it to itself, or to a deleted row that is linked to another row in turn
# (a chain of deleted rows, which may end in a deleted primary no live row names, or
# in a cycle). A deleted row is read through the live rows of its customer, or as
# that customer's id when live rows still name it; one under a live secondary, or
# chained below one, is found from that customer's rows (``with_hanging``).
_STRAY = and_(
    _c.deletedAt.is_not(None),
    or_(
        _c.linkedId == _c.id,
        exists().where(
            _deleted_parent.c.id == _c.linkedId,
            _deleted_parent.c.linkedId.is_not(None),
            _deleted_parent.c.deletedAt.is_not(None),
        ),
    ),
)


def stray_seeds(conn: Connection, strays: Mapping[int, int]) -> set[int]:
    """The ids to lock and read so that these stray deleted rows ({id: linkedId}) are
    repaired: for each, the customer at the top of its chain.

    Its links are followed up, a round of reads per step, to a live row (that row's
    customer), a deleted row linked to nothing or to itself (that row), or a cycle
    (every row of it: the rules choose among them). Each row is read once, so a
    cycle ends the walk.
    """
    links: dict[int, int | None] = dict(strays)
    customer_of: dict[int, int] = {}
    read: set[int] = set(strays)
    wanted = set(strays.values()) - read
    while wanted:
        read |= wanted
        for part in chunks(sorted(wanted)):
            for row_id, linked, deleted_at in conn.execute(
                select(_c.id, _c.linkedId, _c.deletedAt).where(_c.id.in_(part))
            ):
                if deleted_at is None:
                    customer_of[row_id] = linked if linked is not None else row_id
                else:
                    links[row_id] = linked
        wanted = {linked for linked in links.values() if linked is not None} - read
    seeds: set[int] = set()
    done: set[int] = set()  # rows whose chain's top is among the seeds already
    for start in strays:
        path: dict[int, int] = {}  # row id: its place on this walk
        row_id = start
        while row_id not in done:
            if row_id in customer_of:
                seeds.add(customer_of[row_id])
                break
            if row_id not in links:  # no such row
                break
            if row_id in path:
                seeds.update(list(path)[path[row_id] :])
                break
            path[row_id] = len(path)
            linked = links[row_id]
            if linked is None or linked == row_id:
                seeds.add(row_id)
                break
            row_id = linked
        done.update(path)
    return seeds


def _orphaned(after_id: int, below: int | None = None):
    """Live rows whose primary is not a live primary, with customer ids in (after_id, below)."""
    return and_(*_linked_between(after_id, below), _ORPHAN)


@dataclass(frozen=True)
class Stretch:
    """What a batch checks: its customers, the rows to lock for strays, and where it ends."""

    customers: list[int]
    # Stray deleted rows found (``_STRAY``), {id: linkedId}; ``stray_seeds`` says what
    # to lock and read with the customers so that they are repaired.
    strays: dict[int, int]
    last: int


# The next live primaries after an id, through the primary key. MySQL/MariaDB chose the
# linkedId index (linkedId IS NULL as a ref), read every primary from the first one and
# dropped those up to the cursor: a batch cost 4 ms near the start of a table of 960,000
# rows and 108 ms near its end, some 400 s of a whole run; through the primary key it
# cost 1.2 to 1.4 ms wherever it was. SQLite already read it that way.
_PRIMARIES_AFTER = (
    select(_c.id)
    .where(_c.linkedId.is_(None), _c.deletedAt.is_(None), _c.id > bindparam("after"))
    .order_by(_c.id)
    .limit(bindparam("size"))
    .with_hint(Contact.__table__, "FORCE INDEX (PRIMARY)", dialect_name="mysql")
    .with_hint(Contact.__table__, "FORCE INDEX (PRIMARY)", dialect_name="mariadb")
)


def next_stretch(conn: Connection, after_id: int, size: int) -> Stretch | None:
    """The next ``size`` customers after ``after_id``, in id order; None when none is left.

    A customer is a live primary or, for a primary deleted outside the app
    (or a row SQL made a secondary's or its own), the id live rows still point
    at. The second kind is looked for only up to the last primary of the
    batch, one index range, so a walk reads each secondary about once (again
    only when a batch is cut short at ``size``). The same read finds the stray
    deleted rows linked into that range (``_STRAY``); they count among the
    ``size`` by the id they point at, but not as customers: no live row is theirs.
    """
    primaries = conn.execute(_PRIMARIES_AFTER, {"after": after_id, "size": size}).scalars()
    customers = set(primaries)
    below = max(customers) if len(customers) == size else None
    strays: dict[int, int] = {}
    found = conn.execute(
        select(_c.id, _c.linkedId, _c.deletedAt).where(
            *_linked_between(after_id, below), or_(_ORPHAN, _STRAY)
        )
    )
    for row_id, linked, deleted_at in found:
        if deleted_at is None:
            customers.add(linked)
        else:
            strays[row_id] = linked
    places = sorted(customers | set(strays.values()))[:size]
    if not places:
        return None
    last = places[-1]
    return Stretch(
        customers=sorted(c for c in customers if c <= last),
        strays={row_id: linked for row_id, linked in strays.items() if linked <= last},
        last=last,
    )


def _expire_stalled(conn: Connection) -> None:
    conn.execute(
        update(ReconcileJob.__table__)
        .where(_j.active.is_not(None), _j.heartbeat_at < utcnow() - STALE_AFTER)
        .values(status=FAILED, active=None, finished_at=utcnow(), error="stopped responding")
    )


def create_job(actor: str) -> ReconcileJob:
    """Queue a whole-database run; AlreadyRunning when one is queued or running.

    The unique key on ``active`` lets the database, not a worker's memory,
    decide that only one run happens at a time: of two agents starting a run
    together, one insert loses on that key and its retry finds the other's run.
    """

    def work(conn: Connection) -> int:
        _expire_stalled(conn)
        active = conn.execute(
            select(_j.id, _j.status, _j.actor).where(_j.active.is_not(None))
        ).first()
        if active is not None:
            raise AlreadyRunning(
                "a reconciliation of the whole database is already running: "
                f"run {active.id} ({active.status}), started by {active.actor}"
            )
        job_id = conn.execute(
            insert(ReconcileJob.__table__).values(
                actor=actor, status=QUEUED, active=1, heartbeat_at=utcnow()
            )
        ).inserted_primary_key[0]
        db.session.commit()
        return job_id

    return db.session.get(ReconcileJob, write_transaction(work))


def launch(job_id: int) -> None:
    """Start ``flask reconcile --job ID`` as its own process, on this app's database."""
    env = {**os.environ, "DATABASE_URL": current_app.config["SQLALCHEMY_DATABASE_URI"]}
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "reconcile", "--job", str(job_id)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError as exc:
        log.exception("could not start reconciliation run %d", job_id)
        _finish(job_id, FAILED, f"could not start: {exc}")
        return
    # Reap the child when it ends, so that a long-lived worker collects no zombies.
    threading.Thread(target=process.wait, daemon=True).start()
    log.info("reconciliation run %d started as process %d", job_id, process.pid)


def claim_job(job_id: int) -> ReconcileJob:
    """Mark a queued run as running and count the customers it will check.

    NotFound for a run that does not exist, ReconcileError for one that is not queued.
    A database that fails meanwhile fails the run, rather than leaving it queued to
    hold off every other run until it counts as stalled.
    """
    try:
        return _claim(job_id)
    except (SQLAlchemyError, Contention) as exc:
        _fail(job_id, exc, was=QUEUED)
        raise


def _claim(job_id: int) -> ReconcileJob:
    # Counted before the write transaction: on SQLite that holds the database's
    # write lock, and the count reads every secondary. The total is a guide for
    # the progress bar (the run checks whatever it finds), so it need not be exact.
    conn = db.session.connection()
    total = conn.execute(
        select(func.count()).where(_c.linkedId.is_(None), _c.deletedAt.is_(None))
    ).scalar_one()
    total += conn.execute(
        select(func.count(_c.linkedId.distinct())).where(_orphaned(0))
    ).scalar_one()
    db.session.rollback()

    def work(conn: Connection) -> int:
        now = utcnow()
        claimed = conn.execute(
            update(ReconcileJob.__table__)
            .where(_j.id == job_id, _j.status == QUEUED)
            .values(status=RUNNING, total=total, started_at=now, heartbeat_at=now)
        ).rowcount
        db.session.commit()
        return claimed

    if write_transaction(work) != 1:
        job = get_job(job_id)
        if job is None:
            raise NotFound(f"there is no reconciliation run {job_id}")
        raise ReconcileError(f"reconciliation run {job_id} is {job.status}, not waiting to start")
    return db.session.get(ReconcileJob, job_id)


def run_job(job_id: int, progress: Callable[[int], None] | None = None) -> ReconcileJob:
    """Run a claimed job to the end, batch by batch; a failure is stored on the job."""
    job = db.session.get(ReconcileJob, job_id)
    actor, cursor = job.actor, job.cursor
    size = current_app.config["RECONCILE_BATCH_SIZE"]
    db.session.rollback()
    try:
        while True:
            batch = write_transaction(
                lambda conn: reconcile_batch(conn, job_id, cursor, size, actor)  # noqa: B023
            )
            if batch is None:
                break
            cursor = batch.last_id
            if progress is not None and batch.checked:
                progress(batch.checked)
    except Exception as exc:
        _fail(job_id, exc, was=RUNNING)
        raise
    _finish(job_id, DONE, None)
    return db.session.get(ReconcileJob, job_id)


def _fail(job_id: int, exc: Exception, *, was: str) -> None:
    """Log why a run stopped and mark it failed, saying why on its page.

    ``was``: the status the run is marked failed from, queued (it could not start)
    or running; a run found in another (another process runs it) is left as it is.
    A database error is named by its kind, never by its SQL. If the database
    cannot take even that, the run stays as it is until it counts as stalled.
    """
    what = "could not start" if was == QUEUED else "failed"
    db.session.rollback()
    if isinstance(exc, (OperationalError, InterfaceError)):
        # A disk or a server that failed: its kind is what the operator needs, and a
        # traceback through the batch code would bury it.
        log.error("reconciliation run %d %s: the database failed: %s", job_id, what, describe(exc))
    else:
        log.exception("reconciliation run %d %s", job_id, what)
    if isinstance(exc, DBAPIError):
        error = f"the database failed ({error_kind(exc)})"
    else:
        error = str(exc) or type(exc).__name__
    try:
        _finish(job_id, FAILED, error if was == RUNNING else f"{what}: {error}", was=was)
    except (SQLAlchemyError, Contention) as again:
        db.session.rollback()
        log.error("reconciliation run %d could not be marked failed: %s", job_id, describe(again))


def _finish(job_id: int, status: str, error: str | None, *, was: str | None = None) -> None:
    """Close a run with ``status``; only if its status is ``was``, when given."""

    def work(conn: Connection) -> None:
        now = utcnow()
        query = update(ReconcileJob.__table__).where(_j.id == job_id)
        if was is not None:
            query = query.where(_j.status == was)
        conn.execute(
            query.values(status=status, active=None, error=error, finished_at=now, heartbeat_at=now)
        )
        db.session.commit()

    write_transaction(work)


def get_job(job_id: int) -> ReconcileJob | None:
    """One run, fresh from the database."""
    return db.session.get(ReconcileJob, job_id, populate_existing=True)


def recent_jobs(limit: int = 10) -> list[ReconcileJob]:
    """The latest runs, newest first."""
    return list(
        db.session.scalars(select(ReconcileJob).order_by(ReconcileJob.id.desc()).limit(limit))
    )
