"""identity.service.lock_customers: the one "lock, read again until stable" loop every area uses."""

from __future__ import annotations

import pytest
from sqlalchemy import insert, text
from sqlalchemy.exc import OperationalError

from tests.builders import identify
from webapp.database import SQLITE_IMMEDIATE, Retry
from webapp.extensions import db
from webapp.identity import service
from webapp.identity.service import lock_customers
from webapp.models import PRIMARY, Contact, utcnow


def _primaries(count: int) -> list[int]:
    now = utcnow()
    ids = []
    for n in range(count):
        result = db.session.execute(
            insert(Contact.__table__).values(
                email=f"p{n}@example.com",
                email_key=f"p{n}@example.com",
                linkPrecedence=PRIMARY,
                createdAt=now,
                updatedAt=now,
            )
        )
        ids.append(result.inserted_primary_key[0])
    db.session.commit()
    return ids


def _write_connection():
    return db.session.connection(execution_options={SQLITE_IMMEDIATE: True})


def test_reads_again_until_everything_it_relied_on_was_held(app):
    a, b, c = _primaries(3)
    seen: list[frozenset[int]] = []
    # What the read relies on widens as it learns more, as a merge or split would make it.
    relies = iter([{a}, {a, b}, {a, b, c}, {a, b, c}])

    def read(held):
        seen.append(held)
        return "answer", next(relies)

    assert lock_customers(_write_connection(), read) == "answer"
    db.session.rollback()
    assert seen == [frozenset(), {a}, {a, b}, {a, b, c}]


def test_seeds_are_held_before_the_first_read(app):
    a, b = _primaries(2)
    seen = []

    def read(held):
        seen.append(held)
        return held, held

    assert lock_customers(_write_connection(), read, seeds=[b, a]) == {a, b}
    db.session.rollback()
    assert seen == [{a, b}]


def test_a_read_that_never_settles_gives_up_with_retry(app):
    ids = iter(range(1, 10_000))

    def read(_held):
        return None, {next(ids)}

    with pytest.raises(Retry):
        lock_customers(_write_connection(), read)
    db.session.rollback()


def test_the_rows_relied_on_are_locked_against_other_writers(app, dialect):
    if dialect == "sqlite":
        pytest.skip("SQLite has no row locks: BEGIN IMMEDIATE holds the whole database")
    a, b = _primaries(2)
    lock_customers(_write_connection(), lambda held: (None, {a}))
    with db.engine.connect() as other:
        other.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
        # The row not relied on is free...
        other.execute(text("SELECT id FROM `Contact` WHERE id = :id FOR UPDATE"), {"id": b})
        other.rollback()
        # ...the one relied on is held until the first transaction ends.
        with pytest.raises(OperationalError):
            other.execute(text("SELECT id FROM `Contact` WHERE id = :id FOR UPDATE"), {"id": a})
        other.rollback()
    db.session.rollback()


# Row locks are MySQL/MariaDB's: on SQLite the locked write reads the group once whatever it holds.
@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_new_email_for_a_known_customer_reads_the_customer_once_under_lock(
    client, dialect, monkeypatch
):
    """The customer the read pass found is locked before the locked read, which then suffices.

    Without that, MariaDB read the group, locked what it named, and read it again.
    """
    identify(client, "lorraine@hillvalley.edu", "123456")
    reads = []
    real = service.driver_rows

    def counting(conn, query, params):
        reads.append(query)
        return real(conn, query, params)

    monkeypatch.setattr(service, "driver_rows", counting)
    status, body = identify(client, "mcfly@hillvalley.edu", "123456")
    assert status == 200 and body["contact"]["secondaryContactIds"] == [2]
    kinds = ("email", "phone")
    group_reads = [q for q in reads if q == service._group_query(db.engine.dialect, kinds)]
    read_passes = [q for q in reads if q == service._read_query(db.engine.dialect, kinds)]
    assert (len(read_passes), len(group_reads)) == (1, 1)
