"""Engine set-up per dialect and the transaction helpers the services share."""

from __future__ import annotations

import logging
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from flask import current_app
from sqlalchemy import Connection, Engine, event
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from .extensions import db

log = logging.getLogger(__name__)

T = TypeVar("T")

# MySQL/MariaDB error codes that mean "another transaction got there first":
# deadlock, lock wait timeout, duplicate key on a claim row, and the
# snapshot-conflict error MariaDB raises under innodb_snapshot_isolation.
_MYSQL_RETRYABLE = {1213, 1205, 1062, 1020}

# Execution option that asks SQLite for BEGIN IMMEDIATE (the write lock up front).
SQLITE_IMMEDIATE = "sqlite_begin_immediate"

# Execution option for a read that runs one statement at a time: SQLite runs
# each statement in a snapshot of its own, so no BEGIN is sent for it.
SINGLE_STATEMENT = "single_statement_read"


# Values bound into one IN (...) list at most (SQLite binds at most 32766 per statement).
_CHUNK = 500


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``, to bind into one statement each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Retry(Exception):
    """Raised inside a write transaction whose reads went stale; it runs again."""


class Contention(Exception):
    """A write transaction kept losing lock races and gave up; callers answer 503."""


def engine_options(url: str) -> dict:
    """Engine keyword arguments suited to the database behind ``url``."""
    if url.startswith("mysql") or url.startswith("mariadb"):
        # READ COMMITTED: no gap locks, and every statement sees the latest
        # committed rows; the identify service locks what it must explicitly.
        # No pre-ping (a round trip per request on the hot path): a connection
        # the server dropped fails once, is discarded, and the work runs again.
        return {"isolation_level": "READ COMMITTED", "pool_recycle": 1800}
    return {}


def configure_engine(engine: Engine, busy_timeout_ms: int) -> None:
    """Install per-connection settings: WAL, busy timeout and explicit BEGIN on SQLite."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not the sqlite3 module, decide when a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            # Read the file through the OS page cache the workers share,
            # instead of each connection's small private cache (2 MB).
            cursor.execute("PRAGMA mmap_size = 1073741824")
            cursor.execute("PRAGMA cache_size = -16384")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        options = conn.get_execution_options()
        if options.get(SQLITE_IMMEDIATE):
            _begin_immediate(conn, busy_timeout_ms)
        elif not options.get(SINGLE_STATEMENT):
            conn.exec_driver_sql("BEGIN")


def _begin_immediate(conn, busy_timeout_ms: int) -> None:
    """Take SQLite's write lock, waiting for it in short steps.

    SQLite's own busy handler sleeps in steps growing to 100 ms, so a queue of
    writers that each hold the lock for a millisecond or two would wait far
    longer than needed; here a waiter looks again after at most 2 ms. The
    attempts go straight to the driver (this runs on every write); the last
    one, past the deadline, goes through SQLAlchemy so that its error is the
    usual wrapped one.
    """
    driver = conn.connection.driver_connection
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.0002
    driver.execute("PRAGMA busy_timeout = 0")
    try:
        while time.monotonic() < deadline:
            try:
                driver.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY"):
                    break  # not a lock: the attempt below raises it, wrapped
            time.sleep(random.uniform(0.5, 1.0) * delay)
            delay = min(delay * 2, 0.002)
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        driver.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")


def is_retryable(exc: DBAPIError) -> bool:
    """True when ``exc`` is a lost race (or a dropped connection) worth another attempt."""
    if exc.connection_invalidated:
        return True
    orig = exc.orig
    code = orig.args[0] if orig is not None and orig.args else None
    if isinstance(code, int):
        return code in _MYSQL_RETRYABLE
    message = str(orig).lower()
    return "database is locked" in message or "unique constraint failed" in message


def run_write_transaction(work: Callable[[], T], max_attempts: int) -> T:
    """Run ``work`` (which commits) and start it again when it loses a lock race.

    ``work`` begins its own transaction on ``db.session``; on a deadlock, lock
    timeout or a concurrent claim of the same key it is rolled back and run
    again with a short randomised back-off, so that no request fails because
    of another one.
    """
    for attempt in range(1, max_attempts + 1):
        try:
            return work()
        except (OperationalError, IntegrityError, Retry) as exc:
            db.session.rollback()
            if isinstance(exc, DBAPIError) and not is_retryable(exc):
                raise
            log.info("write transaction lost a race (attempt %d): %s", attempt, exc)
            time.sleep(random.uniform(0, 0.004 * attempt))
        except BaseException:
            db.session.rollback()
            raise
    raise Contention(f"gave up after {max_attempts} attempts")


def write_transaction(work: Callable[[Connection], T]) -> T:
    """Run ``work`` on the session's connection in a write transaction, again when it loses a race.

    Any read the caller left open is ended first, so that SQLite takes its
    write lock up front (BEGIN IMMEDIATE): a transaction that read, then
    writes after another connection committed, fails at once with "database
    is locked", whatever the busy timeout. ``work`` commits.
    """

    def attempt() -> T:
        return work(db.session.connection(execution_options={SQLITE_IMMEDIATE: True}))

    db.session.rollback()
    return run_write_transaction(attempt, current_app.config["IDENTIFY_MAX_ATTEMPTS"])
