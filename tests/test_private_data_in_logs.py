"""Customers' e-mails, phones and voucher codes stay out of logs and of the shared limiter storage.

Logs are read by more people, kept longer and shipped further than the
database; an operator diagnosing a failing request needs the path and the
kind of error, not the customer.
"""

from __future__ import annotations

import hashlib
import logging

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from tests.test_vouchers_api import issued_code, validate
from webapp.extensions import db, limit_key_digest, limiter


def test_database_errors_do_not_show_the_values_they_were_given(app):
    with pytest.raises(DBAPIError) as raised:
        db.session.execute(
            text("SELECT id FROM no_such_table WHERE email = :email"),
            {"email": "private@example.com"},
        )
    db.session.rollback()
    assert "no_such_table" in str(raised.value)
    assert "private@example.com" not in str(raised.value)


def test_an_incoming_call_is_logged_without_the_callers_number(client, api_key, caplog):
    caplog.set_level(logging.INFO, logger="webapp")
    response = client.post("/calls/incoming", json={"phoneNumber": "+44 20 7946 0123"})
    assert response.status_code in (200, 201), response.get_json()
    (line,) = [r.getMessage() for r in caplog.records if "incoming call" in r.getMessage()]
    assert "7946" not in line and "0123" not in line


def test_voucher_codes_are_counted_under_a_hash(app, client, api_key):
    code = issued_code(client)
    assert validate(client, code).status_code == 200
    canonical = code.replace("-", "")
    storage = limiter.storage
    keys = " ".join([*storage.storage, *storage.events, *storage.expirations])
    assert "code:" in keys, "no per-code counter found: nothing tested"
    assert canonical not in keys.upper()
    # Keyed with SECRET_KEY: a plain SHA-256 could be searched offline over the code space.
    assert hashlib.sha256(canonical.encode()).hexdigest() not in keys
    assert limit_key_digest(canonical) in keys


# MariaDB's own message names the value ("Duplicate entry 'racer@example.com'").
@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_lost_claim_race_is_logged_without_the_value(client, dialect, caplog):
    caplog.set_level(logging.INFO)
    raced = []

    def another_worker_claims_first(_conn, _cursor, statement, *_args):
        if statement.startswith("INSERT INTO identifier") and not raced:
            raced.append(True)
            with db.engine.connect() as other:
                other.execute(
                    text(
                        "INSERT INTO identifier (kind, `key`, created_at) "
                        "VALUES ('email', 'racer@example.com', NOW())"
                    )
                )
                other.commit()

    event.listen(db.engine, "before_cursor_execute", another_worker_claims_first)
    try:
        response = client.post("/identify", json={"email": "racer@example.com"})
    finally:
        event.remove(db.engine, "before_cursor_execute", another_worker_claims_first)
    assert response.status_code == 200
    lines = [r.getMessage() for r in caplog.records if "lost a race" in r.getMessage()]
    assert lines, "no race was lost: nothing tested"
    assert "IntegrityError 1062" in lines[0]
    assert not [line for line in lines if "racer@example.com" in line]
