"""Test data builders and checks shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path

from alembic.script import ScriptDirectory
from sqlalchemy import insert, select, text

from webapp.extensions import db
from webapp.identity.rules import Row, invariant_violations
from webapp.models import PRIMARY, SECONDARY, Contact, Identifier, utcnow

T0 = datetime(2026, 1, 1, 12, 0, 0)

# The newest migration: the revision an upgraded database is at.
HEAD_REVISION = ScriptDirectory(
    str(Path(__file__).resolve().parent.parent / "migrations")
).get_current_head()


def row(id, email=None, phone=None, linked_id=None, minute=None) -> Row:
    """A domain Row; keys derived the simple way (lower-case e-mail, phone as given)."""
    return Row(
        id=id,
        email=email,
        phone=phone,
        email_key=email.lower() if email else None,
        phone_key=phone,
        linked_id=linked_id,
        created_at=T0 + timedelta(minutes=id if minute is None else minute),
    )


def identify(client, email=None, phone=None, **extra):
    """POST /identify with the given values and return (status, json)."""
    body = {"email": email, "phoneNumber": phone, **extra}
    response = client.post("/identify", json=body)
    return response.status_code, response.get_json()


def many_rows_customer(count: int, phone: str = "5550000", name: str = "junk") -> list[int]:
    """A customer of ``count`` rows sharing one phone; its ids oldest first by (createdAt, id).

    Each row has an e-mail of its own (``name`` and the row's number). Rows come two
    to a timestamp, so the id has to break ties.
    """
    ids = []
    for n in range(count):
        contact = Contact(
            email=f"{name}{n}@x.io",
            email_key=f"{name}{n}@x.io",
            phoneNumber=phone,
            phone_key=phone,
            linkedId=ids[0] if ids else None,
            linkPrecedence=SECONDARY if ids else PRIMARY,
            createdAt=T0 + timedelta(minutes=n // 2),
            source="checkout",
        )
        db.session.add(contact)
        db.session.flush()
        ids.append(contact.id)
    db.session.commit()
    return ids


def one_phone_customer(count: int, phone: str = "5550000") -> None:
    """A customer of ``count`` rows (ids 1 to ``count`` in an empty table) sharing a phone,
    each with an e-mail of its own, inserted in one statement and committed."""
    now = utcnow()
    db.session.execute(
        insert(Contact),
        [
            {
                "email": f"row{n}@x.io",
                "email_key": f"row{n}@x.io",
                "phoneNumber": phone,
                "phone_key": phone,
                "linkedId": None if n == 0 else 1,
                "linkPrecedence": PRIMARY if n == 0 else SECONDARY,
                "createdAt": now,
                "updatedAt": now,
                "source": "checkout",
            }
            for n in range(count)
        ],
    )
    db.session.commit()


def refresh_statistics(table: str) -> None:
    """Commit, and on MariaDB have InnoDB count ``table`` again: stale, its statistics
    mislead the plans a test of the database's work looks at."""
    db.session.commit()
    if db.engine.dialect.name != "sqlite":
        db.session.execute(text(f"ANALYZE TABLE {table}"))
        db.session.commit()


def contacts() -> list[Contact]:
    """Every contact row, deleted or not, in id order, read afresh (a new transaction)."""
    db.session.rollback()
    return list(db.session.scalars(select(Contact).order_by(Contact.id)))


def live_rows() -> list[Row]:
    """The live contact rows as domain Rows."""
    return [
        Row(
            id=c.id,
            email=c.email,
            phone=c.phoneNumber,
            email_key=c.email_key,
            phone_key=c.phone_key,
            linked_id=c.linkedId,
            created_at=c.createdAt,
        )
        for c in contacts()
        if c.deletedAt is None
    ]


def blocked_keys() -> set[tuple[str, str]]:
    """The (kind, key) pairs of every blocked identifier."""
    return set(
        db.session.execute(
            select(Identifier.kind, Identifier.key).where(Identifier.blocked_at.is_not(None))
        ).all()
    )


def assert_invariants() -> None:
    """Every connected group has one primary, links are one hop, precedence agrees.

    Blocked values connect nothing, so customers may share them.
    """
    problems = invariant_violations(live_rows(), blocked_keys())
    for c in contacts():
        expected = PRIMARY if c.linkedId is None else SECONDARY
        if c.linkPrecedence != expected:
            problems.append(f"row {c.id} says {c.linkPrecedence} but linkedId is {c.linkedId}")
    db.session.rollback()
    assert problems == []


AGENT_EMAIL = "agent@example.com"
AGENT_PASSWORD = "correct horse battery"


def make_agent(email: str = AGENT_EMAIL, password: str = AGENT_PASSWORD, active: bool = True):
    """A dashboard agent, created through the real service (argon2 hash), committed."""
    from webapp.auth.service import create_agent, disable_agent

    user = create_agent(email, password)
    if not active:
        user = disable_agent(email)
    return user


def csrf_token_from(html: str) -> str:
    """The CSRF token a rendered page carries (the hidden form field or the htmx header)."""
    import re

    found = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html) or re.search(
        r'"X-CSRFToken": "([^"]+)"', html
    )
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client, email: str = AGENT_EMAIL, password: str = AGENT_PASSWORD):
    """Sign in through the real form; later requests send the CSRF header as htmx does."""
    token = csrf_token_from(client.get("/sign-in").get_data(as_text=True))
    response = client.post(
        "/sign-in", data={"email": email, "password": password, "csrf_token": token}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    page = client.get("/").get_data(as_text=True)
    client.environ_base["HTTP_X_CSRFTOKEN"] = csrf_token_from(page)
    return response


def commit_elsewhere() -> None:
    """Commit a write on another connection, as a concurrent request would.

    Called between a service's read and its write, it recreates the race
    SQLite loses at once (not after the busy timeout): a transaction that
    read before another connection committed cannot then write.
    """
    with db.engine.connect() as other, other.begin():
        other.execute(
            insert(Identifier).values(kind="email", key=f"elsewhere-{utcnow():%H%M%S%f}@x.io")
        )


@contextmanager
def statements_run() -> Iterator[list[str]]:
    """Collect the SQL statements the app sends to the database while the block runs."""
    from sqlalchemy import event

    statements: list[str] = []

    def collect(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", collect)
    try:
        yield statements
    finally:
        event.remove(db.engine, "before_cursor_execute", collect)


@contextmanager
def database_work() -> Iterator[list[int]]:
    """How much the database worked for the connections checked out while the block ran.

    ``work[0]`` counts rows MariaDB's handlers read (its Handler_read_* counters) or,
    on SQLite, tens of virtual-machine steps: comparable within one database only.
    Every connection must be back in the pool when the block ends.
    """
    from sqlalchemy import event

    work = [0]
    sqlite = db.engine.dialect.name == "sqlite"

    def handler_reads(dbapi_connection) -> int:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("SHOW SESSION STATUS LIKE 'Handler_read%'")
            return sum(int(value) for _name, value in cursor.fetchall())
        finally:
            cursor.close()

    def step() -> int:
        work[0] += 1
        return 0  # go on

    def checkout(dbapi_connection, record, proxy) -> None:
        if sqlite:
            dbapi_connection.set_progress_handler(step, 10)
        else:
            record.info["handler_reads"] = handler_reads(dbapi_connection)

    def checkin(dbapi_connection, record) -> None:
        if sqlite:
            dbapi_connection.set_progress_handler(None, 100)
        elif "handler_reads" in record.info:
            work[0] += handler_reads(dbapi_connection) - record.info.pop("handler_reads")

    event.listen(db.engine, "checkout", checkout)
    event.listen(db.engine, "checkin", checkin)
    try:
        yield work
    finally:
        event.remove(db.engine, "checkout", checkout)
        event.remove(db.engine, "checkin", checkin)


# The key integrations send in tests; the app fixture sets no keys, ``api_key`` does.
TEST_API_KEY = "test-integration-key"
API_KEY_HEADER = {"Authorization": f"Bearer {TEST_API_KEY}"}


def post_once(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    """One POST over a fresh connection to a live server, with the tests' API key.

    (status, JSON body), whatever the status: the concurrency tests count them.
    """
    import http.client
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request(
            "POST",
            path,
            body=json.dumps(body),
            headers={"Content-Type": "application/json", **API_KEY_HEADER, **(headers or {})},
        )
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def post_json(base_url: str, path: str, body: dict) -> dict:
    """POST to a live server as the shop, the telephony or the CRM would; the JSON answer.

    It sends the tests' API key, which a server with no API_KEYS ignores.
    """
    import json
    import urllib.request

    request = urllib.request.Request(
        base_url + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **API_KEY_HEADER},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 201)
        return json.loads(response.read())


def is_fragment(response, root_id: str) -> bool:
    """An htmx fragment whose root has ``root_id``, not a whole page, varying on HX-Request."""
    html = response.get_data(as_text=True)
    return "<html" not in html and f'id="{root_id}"' in html and "HX-Request" in response.vary


def is_page(response) -> bool:
    """A whole page (layout, navigation and styles), varying on HX-Request."""
    html = response.get_data(as_text=True)
    return "<html" in html and "HX-Request" in response.vary


def stored_counters() -> dict[str, int]:
    """The limiter's counters as the storage it counts in holds them: {storage key: count}.

    That storage is the in-memory fallback while the limiter takes its storage for
    unreachable, which a test of an unreachable Redis can leave it doing for a while.
    """
    from webapp.extensions import limiter

    return dict(limiter.limiter.storage.storage)
