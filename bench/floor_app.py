"""The floor: the least work any correct identify must do, with nothing else.

Served like bench/bare_app.py, against a seeded SQLite database named by
``FLOOR_DATABASE``. Per request it parses the body, reads the Contact rows
holding the e-mail or the phone with one indexed statement through the
standard library's sqlite3 (no ORM, no validation, no locking, no answer
assembly), and when a value was not found it inserts one row and commits.
It is not a correct identify (it never merges, and it lists no secondaries);
it is a lower bound on the cost of one. If this floor's throughput is below
the target share of the bare endpoint's, no implementation on SQLite meets it.
"""

import os
import sqlite3

from flask import Flask, jsonify, request

app = Flask(__name__)

_READ = (
    'SELECT id, email_key, phone_key FROM "Contact" '
    'WHERE "deletedAt" IS NULL AND (email_key = ? OR phone_key = ?)'
)
_INSERT = (
    'INSERT INTO "Contact" (email, "phoneNumber", email_key, phone_key, "linkPrecedence", '
    'source, "createdAt", "updatedAt") '
    "VALUES (?, ?, ?, ?, 'primary', 'checkout', datetime('now'), datetime('now'))"
)
_connection: sqlite3.Connection | None = None


def _database() -> sqlite3.Connection:
    """One connection per worker, opened after gunicorn forks, set up as the app's."""
    global _connection
    if _connection is None:
        _connection = sqlite3.connect(os.environ["FLOOR_DATABASE"], isolation_level=None, timeout=5)
        _connection.execute("PRAGMA journal_mode = WAL")
        _connection.execute("PRAGMA synchronous = NORMAL")
    return _connection


def _phone_key(phone) -> str | None:
    if phone is None or phone == "":
        return None
    text = str(phone).strip()
    digits = "".join(ch for ch in text if ch.isdigit())
    return ("+" + digits) if text.startswith("+") else digits


@app.post("/identify")
def identify():
    """One indexed read; one committed insert when the request brings a new value."""
    body = request.get_json()
    email = (body.get("email") or "").strip() or None
    phone = body.get("phoneNumber")
    email_key = email.lower() if email else None
    phone_key = _phone_key(phone)
    conn = _database()
    rows = conn.execute(_READ, (email_key, phone_key)).fetchall()
    known_emails = {row[1] for row in rows}
    known_phones = {row[2] for row in rows}
    if (email_key and email_key not in known_emails) or (
        phone_key and phone_key not in known_phones
    ):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_INSERT, (email, phone and str(phone), email_key, phone_key))
        conn.execute("COMMIT")
    first = rows[0][0] if rows else 0
    return jsonify(
        contact={
            "primaryContactId": first,
            "primaryContatctId": first,
            "emails": [email] if email else [],
            "phoneNumbers": [phone] if phone else [],
            "secondaryContactIds": [row[0] for row in rows[1:]],
        }
    )


@app.get("/healthz")
def healthz():
    """Readiness probe for the benchmark runner."""
    return jsonify(status="ok")
