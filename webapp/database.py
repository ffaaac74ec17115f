"""Engine set-up per dialect and the transaction helpers the services share."""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import current_app, has_request_context
from sqlalchemy import Connection, Engine, Select, event, inspect, text
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError, SQLAlchemyError

from .extensions import db

log = logging.getLogger(__name__)

T = TypeVar("T")

# MySQL/MariaDB error codes that mean "another transaction got there first":
# deadlock, lock wait timeout, duplicate key on a claim row, and the
# snapshot-conflict error MariaDB raises under innodb_snapshot_isolation.
_MYSQL_RETRYABLE = {1213, 1205, 1062, 1020}

# MySQL/MariaDB error codes that refuse a value the statement carried: out of range
# (1264), truncated (1265), a date it cannot hold (1292), text its character set cannot
# hold (1300, 1366), too long (1406), text compared across character sets (1267, 1271).
_MYSQL_REFUSED_VALUE = {1264, 1265, 1267, 1271, 1292, 1300, 1366, 1406}

# Execution option that asks SQLite for BEGIN IMMEDIATE (the write lock up front).
SQLITE_IMMEDIATE = "sqlite_begin_immediate"
# Where alembic keeps the migration a database's schema is at.
VERSION_TABLE = "alembic_version"


# Values bound into one IN (...) list at most (SQLite binds at most 32766 per statement).
_CHUNK = 500


def chunks(items: Sequence[T], size: int = _CHUNK) -> Iterator[Sequence[T]]:
    """``items`` in slices of at most ``size``, to bind into one statement each."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass(frozen=True)
class DriverQuery:
    """A SELECT compiled once for one dialect, run straight on the driver's cursor.

    For the identify hot path, where SQLAlchemy's per-execution work (execution
    context, parameter and result processing, events) cost more than the
    database's own (docs/benchmarks.md). Build one with ``driver_query`` and run
    it with ``driver_rows``.
    """

    sql: str
    # The parameters in the order the driver binds them; None when it binds by name.
    order: tuple[str, ...] | None
    # Values bound in the statement itself (literals such as a kind's name).
    fixed: Mapping[str, Any]
    # Per selected column, what turns the driver's value into the column type's
    # Python value (None: nothing to do), as SQLAlchemy's result would.
    processors: tuple[Callable[[Any], Any] | None, ...]

    def arguments(self, params: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        values = {**self.fixed, **params}
        return values if self.order is None else tuple(values[name] for name in self.order)


def driver_query(dialect: Dialect, statement: Select) -> DriverQuery:
    """Compile ``statement`` for ``dialect`` once, to run with ``driver_rows``.

    Only for parameters the driver takes as they are (strings and numbers):
    a statement whose parameters need converting, or whose SQL depends on
    them (``IN`` lists), is refused here rather than bound wrongly later.
    """
    compiled = statement.compile(dialect=dialect)
    for name, bind in compiled.binds.items():
        if bind.expanding or bind.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            raise ValueError(f"parameter {name!r} cannot go to the driver unconverted")
    processors = tuple(
        column.type.dialect_impl(dialect).result_processor(dialect, None)
        for column in statement.selected_columns
    )
    return DriverQuery(
        sql=str(compiled),
        order=tuple(compiled.positiontup) if compiled.positional else None,
        fixed={k: v for k, v in compiled.params.items() if not compiled.binds[k].required},
        processors=processors,
    )


def driver_rows(conn: Connection, query: DriverQuery, params: Mapping[str, Any]) -> list[tuple]:
    """Run ``query`` on ``conn``'s driver connection, in whatever transaction it is in.

    It begins none: on a connection whose transaction has not begun, SQLite
    runs the statement in a snapshot of its own (MySQL's driver opens one that
    the pool's rollback ends).

    Errors come out as SQLAlchemy's (``OperationalError``, ``IntegrityError``,
    ...), and a connection the dialect says is gone is invalidated with
    ``connection_invalidated`` set, the rest of the pool with it, as
    ``Connection.execute`` would: the retry logic relies on both. No
    cursor-execute events fire for these statements, so engine echo and SQL
    instrumentation do not see them.
    """
    dialect = conn.dialect
    driver = conn.connection.dbapi_connection
    arguments = query.arguments(params)
    cursor = None
    try:
        cursor = driver.cursor()
        cursor.execute(query.sql, arguments)
        rows = cursor.fetchall()
    except dialect.loaded_dbapi.Error as exc:
        gone = dialect.is_disconnect(exc, driver, cursor)
        wrapped = DBAPIError.instance(
            query.sql,
            arguments,
            exc,
            dialect.loaded_dbapi.Error,
            connection_invalidated=gone,
            dialect=dialect,
            hide_parameters=conn.engine.hide_parameters,
        )
        if gone:
            conn.invalidate(exc)
            # As Connection.execute does, treat the pool's other connections as
            # dropped too (a restarted server dropped them all): they are
            # replaced, not handed out to fail one retry after another.
            conn.engine.dispose()
        raise wrapped from exc
    finally:
        if cursor is not None:
            _close_quietly(cursor)
    if not any(query.processors):
        return list(rows)
    pairs = list(enumerate(query.processors))
    return [tuple(convert(row[i]) if convert else row[i] for i, convert in pairs) for row in rows]


def _close_quietly(cursor) -> None:
    # The cursor of a connection that failed may fail to close too: the query's error is the one.
    try:
        cursor.close()
    except Exception:
        log.debug("closing the cursor of a failed query failed too", exc_info=True)


class Retry(Exception):
    """Raised inside a write transaction whose reads went stale; it runs again."""


class Contention(Exception):
    """A write transaction kept losing lock races and gave up; callers answer 503."""


# Seconds past a lock wait that a MySQL/MariaDB server may stay silent on a request's
# statement before the statement fails as a lost connection.
SILENT_SERVER_MARGIN_S = 5
# pymysql's own time-out for opening a connection.
_MYSQL_CONNECT_TIMEOUT_S = 10


def engine_options(url: str, lock_wait_s: int | None = None) -> dict:
    """Engine keyword arguments suited to the database behind ``url``.

    Errors never show their statements' parameters (customers' e-mails and
    phones, voucher codes): they end up in logs.

    ``lock_wait_s`` (given when serving requests, the MySQL/MariaDB lock wait):
    a statement the server does not answer within the lock wait plus
    SILENT_SERVER_MARGIN_S, and a connection it does not open within that (10 s
    at most), fails. Without a time-out, a database that took connections and
    never answered (a network dropping its packets, a stuck server) held every
    request until gunicorn killed the worker (a 500 after 30 s), the health
    check too. A statement waiting for a row lock gets the server's own error
    first. Commands (``db upgrade``, whole-database runs) get none: a migration's
    ALTER TABLE may rightly run for minutes.
    """
    options = {"hide_parameters": True}
    if url.startswith("mysql") or url.startswith("mariadb"):
        # READ COMMITTED: no gap locks, and every statement sees the latest
        # committed rows; the identify service locks what it must explicitly.
        # No pre-ping (a round trip per request on the hot path): a connection
        # the server dropped fails once, is discarded, and the work runs again.
        options.update(isolation_level="READ COMMITTED", pool_recycle=1800)
        if lock_wait_s is not None:
            silence = int(lock_wait_s) + SILENT_SERVER_MARGIN_S
            options["connect_args"] = {
                "read_timeout": silence,
                "write_timeout": silence,
                "connect_timeout": min(silence, _MYSQL_CONNECT_TIMEOUT_S),
            }
    return options


def configure_engine(engine: Engine, config: Mapping[str, Any]) -> None:
    """Install per-connection settings from the app's (checked) ``config``.

    SQLite: WAL, the busy timeout and explicit BEGIN. ``SQLITE_WAL_AUTOCHECKPOINT``
    is how many pages the WAL may hold before the committing connection copies
    them into the database file (SQLite's default is 1000). MySQL/MariaDB: how
    long a statement waits for a row lock.
    """
    if engine.dialect.name in ("mysql", "mariadb"):
        lock_wait_s = int(config["MYSQL_LOCK_WAIT_TIMEOUT_S"])

        @event.listens_for(engine, "connect")
        def _on_mysql_connect(dbapi_connection, _record):
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {lock_wait_s}")

        return
    if engine.dialect.name != "sqlite":
        return
    busy_timeout_ms = int(config["SQLITE_BUSY_TIMEOUT_MS"])
    wal_autocheckpoint = int(config["SQLITE_WAL_AUTOCHECKPOINT"])

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
            # A new contact's search-index entries land on some thirty pages,
            # and the busiest of them (common grams such as "com") change with
            # nearly every new customer. The larger the WAL between checkpoints,
            # the more of those rewrites a checkpoint folds into one copy
            # (docs/benchmarks.md). The file is cut back to that size after a
            # burst that outgrew it.
            cursor.execute(f"PRAGMA wal_autocheckpoint = {int(wal_autocheckpoint)}")
            page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
            cursor.execute(f"PRAGMA journal_size_limit = {int(wal_autocheckpoint) * page_size}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        options = conn.get_execution_options()
        if options.get(SQLITE_IMMEDIATE):
            _begin_immediate(conn, busy_timeout_ms)
        else:
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


def describe(exc: BaseException) -> str:
    """A database error for the logs: its kind, the driver's code and the statement.

    Never the driver's message: MySQL/MariaDB's name the values ("Duplicate
    entry 'anna@example.com'"), and the parameters are hidden for the same reason.
    """
    if not isinstance(exc, DBAPIError):
        return type(exc).__name__ + (f": {exc}" if isinstance(exc, Retry) else "")
    statement = " ".join(str(exc.statement or "").split())[:200]
    return f"{error_kind(exc)} in {statement!r}"


def unreachable_advice(engine: Engine) -> str:
    """What to check when ``engine``'s database cannot be opened, for an operator."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        # "unable to open database file" also means a folder this user cannot write:
        # SQLite keeps its -wal and -shm files beside the database.
        folder = os.path.dirname(os.path.abspath(engine.url.database))
        return (
            f"Check DATABASE_URL, and that the folder {folder} exists and this user can "
            "write to it (SQLite keeps its -wal and -shm files beside the database)."
        )
    return "Check DATABASE_URL."


def _driver_code(exc: SQLAlchemyError) -> int | None:
    """The MySQL/MariaDB error number behind ``exc``; None for other drivers and errors."""
    orig = exc.orig if isinstance(exc, DBAPIError) else None
    code = orig.args[0] if orig is not None and orig.args else None
    return code if isinstance(code, int) else None


def error_kind(exc: DBAPIError) -> str:
    """A database error's kind and the driver's code (MySQL/MariaDB) or message (SQLite)."""
    orig = exc.orig
    code = _driver_code(exc)
    kind = type(orig).__name__ if orig is not None else type(exc).__name__
    # SQLite's messages name no values ("database is locked", "no such table: x").
    shown = f" {code}" if code is not None else f": {orig}" if orig is not None else ""
    return kind + shown


def refuses_a_value(exc: SQLAlchemyError) -> bool:
    """True when the database refused a value of the statement (too long, out of range,
    text it cannot hold): the same request fails the same way every time, so it is no
    outage, and no answer may tell the client to send it again.

    Input is checked before it reaches the database; this is what the error handlers
    fall back on where a check is missing (or a column was changed by hand).
    """
    return isinstance(exc, DataError) or _driver_code(exc) in _MYSQL_REFUSED_VALUE


def is_retryable(exc: DBAPIError) -> bool:
    """True when ``exc`` is a lost race (or a dropped connection) worth another attempt."""
    if exc.connection_invalidated:
        return True
    code = _driver_code(exc)
    if code is not None:
        return code in _MYSQL_RETRYABLE
    message = str(exc.orig).lower()
    return "database is locked" in message or "unique constraint failed" in message


def run_write_transaction(work: Callable[[], T], max_attempts: int) -> T:
    """Run ``work`` (which commits) and start it again when it loses a lock race.

    ``work`` begins its own transaction on ``db.session``; on a deadlock, lock
    timeout or a concurrent claim of the same key it is rolled back and run
    again with a short randomised back-off, so that no request fails because
    of another one.

    Serving a request, it also gives up once it has been at it for one lock
    wait (the SQLite busy timeout, MySQL/MariaDB's lock wait timeout; at least
    1 s): a lock held for long by someone else then ends in 503 after about
    two lock waits, before gunicorn's worker timeout kills the request (a 500).
    Commands (a whole-database run, a reindex) have no such timeout, and keep
    their attempts.
    """
    started = time.monotonic()
    for attempt in range(1, max_attempts + 1):
        try:
            return work()
        except (OperationalError, IntegrityError, Retry) as exc:
            db.session.rollback()
            if isinstance(exc, DBAPIError) and not is_retryable(exc):
                raise
            log.info("write transaction lost a race (attempt %d): %s", attempt, describe(exc))
            if has_request_context() and time.monotonic() - started >= retry_window():
                raise Contention(f"still locked out after {attempt} attempts") from exc
            time.sleep(random.uniform(0, 0.004 * attempt))
        except BaseException:
            db.session.rollback()
            raise
    raise Contention(f"gave up after {max_attempts} attempts")


def schema_revisions() -> tuple[frozenset[str], frozenset[str]]:
    """This code's head migrations, and every migration it knows (read once per process)."""
    revisions = current_app.extensions.get("schema_revisions")
    if revisions is None:
        from alembic.script import ScriptDirectory

        script = ScriptDirectory(current_app.extensions["migrate"].directory)
        heads = frozenset(script.get_heads())
        known = frozenset(r.revision for r in script.walk_revisions())
        revisions = current_app.extensions["schema_revisions"] = (heads, known)
    return revisions


def schema_versions(conn: Connection) -> set[str]:
    """The migrations the database's schema is at (none: no migration ever ran on it)."""
    if not inspect(conn).has_table(VERSION_TABLE):
        return set()
    return set(conn.scalars(text(f"SELECT version_num FROM {VERSION_TABLE}")))


def retry_window() -> float:
    """Seconds a write keeps trying again: one lock wait, and at least 1 s for quick races."""
    config = current_app.config
    if db.engine.dialect.name == "sqlite":
        wait = config["SQLITE_BUSY_TIMEOUT_MS"] / 1000
    else:
        wait = config["MYSQL_LOCK_WAIT_TIMEOUT_S"]
    return max(float(wait), 1.0)


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
