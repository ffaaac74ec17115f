"""Fresh benchmark databases built by the migrations, and bulk seeding in identify's shape."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from bench import customers
from webapp.identity.rules import EMAIL, PHONE, phone_key
from webapp.models import PRIMARY, SECONDARY, Contact, Identifier

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MYSQL_SERVER = "mysql+pymysql://root@127.0.0.1:3306"

# Seeded customers were first seen over the two years before this moment.
SEED_START = datetime(2024, 11, 1)
SEED_SPAN = timedelta(days=730)

BATCH_ROWS = 20_000

_contact = Contact.__table__
_identifier = Identifier.__table__


@dataclass(frozen=True)
class SeedStats:
    """What seeding wrote and how long it took."""

    customers: int
    contacts: int
    identifiers: int
    seconds: float


def app_environment(url: str) -> dict[str, str]:
    """Environment for the app's processes (migrations, gunicorn) against ``url``."""
    env = dict(os.environ)
    env["DATABASE_URL"] = url
    env["APP_ENV"] = "production"
    # A throwaway key: the benchmark must not write one into the instance folder.
    env.setdefault("SECRET_KEY", "benchmark-only-not-secret-0123456789")
    env.pop("API_KEYS", None)
    return env


def migrate(url: str) -> None:
    """Build the schema the way operators do: ``flask db upgrade``."""
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
        cwd=ROOT,
        env=app_environment(url),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"migrations failed:\n{result.stderr[-4000:]}")


@contextmanager
def fresh_database(
    dialect: str, name: str, workdir: Path, mysql_server: str = DEFAULT_MYSQL_SERVER
) -> Iterator[str]:
    """A new migrated database, removed afterwards; yields its SQLAlchemy URL."""
    if dialect == "sqlite":
        path = workdir / f"{name}.db"
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        for file in files:
            file.unlink(missing_ok=True)
        url = f"sqlite:///{path}"
        try:
            migrate(url)
            yield url
        finally:
            for file in files:
                file.unlink(missing_ok=True)
        return
    if dialect != "mariadb":
        raise ValueError(f"unknown database {dialect!r}")
    server = sa.create_engine(mysql_server.rstrip("/") + "/")
    with server.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    try:
        url = f"{mysql_server.rstrip('/')}/{name}?charset=utf8mb4"
        migrate(url)
        yield url
    finally:
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        server.dispose()


def bulk_engine(url: str) -> sa.Engine:
    """An engine tuned for loading: only the seeding connection skips the safety nets."""
    engine = sa.create_engine(url)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_bulk(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode = WAL")
            # Durability is pointless for a throwaway load; the app's own
            # connections keep synchronous = NORMAL.
            cursor.execute("PRAGMA synchronous = OFF")
            cursor.execute("PRAGMA cache_size = -262144")
            cursor.close()

    else:

        @sa.event.listens_for(engine, "connect")
        def _mysql_bulk(dbapi_connection, _record):
            cursor = dbapi_connection.cursor()
            # The seeder writes valid keys and links by construction.
            cursor.execute("SET SESSION foreign_key_checks = 0, unique_checks = 0")
            cursor.close()

    return engine


def _customer_rows(index: int, first_id: int, created: datetime, gap: timedelta):
    """The contact rows and identifier claims identify would have written for one customer."""
    email = customers.email(index)
    phone = customers.phone(index)
    rows = [
        {
            "id": first_id,
            "email": email,
            "phoneNumber": phone,
            "email_key": email.lower(),
            "phone_key": phone_key(phone),
            "linkedId": None,
            "linkPrecedence": PRIMARY,
            "createdAt": created,
            "updatedAt": created,
            "deletedAt": None,
            "source": "checkout",
        }
    ]
    claims = [(EMAIL, email.lower(), created), (PHONE, phone_key(phone), created)]
    if customers.has_second_email(index):
        # A later checkout with a new address and the known phone: one secondary row.
        second = customers.second_email(index)
        later = created + gap / 2
        rows.append(
            {
                **rows[0],
                "id": first_id + 1,
                "email": second,
                "email_key": second.lower(),
                "linkedId": first_id,
                "linkPrecedence": SECONDARY,
                "createdAt": later,
                "updatedAt": later,
            }
        )
        claims.append((EMAIL, second.lower(), later))
    return rows, claims


def seed_customers(url: str, count: int) -> SeedStats:
    """Bulk-insert ``count`` customers (and their claims) into an empty migrated database."""
    started = time.perf_counter()
    engine = bulk_engine(url)
    gap = SEED_SPAN / max(count, 1)
    next_id = 1
    contact_batch: list[dict] = []
    claim_batch: list[dict] = []
    contacts = identifiers = 0

    def flush() -> None:
        with engine.begin() as conn:
            if contact_batch:
                conn.execute(sa.insert(_contact), contact_batch)
            if claim_batch:
                conn.execute(sa.insert(_identifier), claim_batch)
        contact_batch.clear()
        claim_batch.clear()

    for index in range(count):
        rows, claims = _customer_rows(index, next_id, SEED_START + gap * index, gap)
        next_id += len(rows)
        contacts += len(rows)
        identifiers += len(claims)
        contact_batch.extend(rows)
        claim_batch.extend({"kind": k, "key": key, "created_at": at} for k, key, at in claims)
        if len(contact_batch) >= BATCH_ROWS:
            flush()
            log.debug("seeded %d of %d customers", index + 1, count)
    flush()
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            # Start the measured run from a checkpointed file, not a huge WAL.
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return SeedStats(count, contacts, identifiers, time.perf_counter() - started)


def table_count(url: str, table: sa.Table) -> int:
    """Rows in ``table``."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()
