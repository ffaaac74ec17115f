"""The schema comes only from migrations: they build it, and it matches the models."""

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import event, insert, make_url, select, text, update
from sqlalchemy import inspect as sa_inspect

from tests.builders import HEAD_REVISION, make_agent
from tests.conftest import ROOT
from webapp import create_app
from webapp.extensions import db
from webapp.identity.rules import parse_email, parse_identifier
from webapp.identity.search_index import ContactGram, contact_grams, name_grams
from webapp.identity.service import identify
from webapp.models import (
    AuditCustomer,
    AuditEntry,
    Bond,
    BondKey,
    Contact,
    Identifier,
    User,
    utcnow,
)
from webapp.reconcile.service import set_blocked
from webapp.vouchers.models import Voucher
from webapp.vouchers.service import issue_to_customer


def test_migrated_schema_matches_models(app):
    with db.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)
    assert differences == []


def test_one_head_and_the_database_is_at_it(app):
    script = ScriptDirectory.from_config(app.extensions["migrate"].migrate.get_config())
    heads = script.get_heads()
    assert len(heads) == 1
    with db.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == tuple(heads)


def test_0008_indexes_the_names_already_kept_and_its_downgrade_removes_them(app):
    client = app.test_client()
    for name in ("Anna Berg", "Anna Berglund"):
        body = {"email": "anna@example.com", "channel": "sms", "direction": "inbound"}
        response = client.post("/events", json={**body, "name": name})
        assert response.status_code == 201, response.get_json()
    contact_id = response.get_json()["event"]["contactId"]
    expected = {(g, contact_id) for g in name_grams("anna berg") | name_grams("anna berglund")}
    name_entries = select(ContactGram.gram, ContactGram.contact_id).where(
        ContactGram.gram.startswith("n")
    )
    db.session.rollback()
    try:
        downgrade(revision="0007_merge")
        assert set(db.session.execute(name_entries).all()) == set()
        db.session.rollback()
        # An entry already there (written by a newer app) must not make the upgrade fail.
        db.session.add(ContactGram(gram="nann", contact_id=contact_id))
        db.session.commit()
    finally:
        upgrade()
    assert set(db.session.execute(name_entries).all()) == expected
    db.session.rollback()


def test_0009_keys_every_bond_turns_merge_evidence_into_bonds_and_withdraws_unheld_keys(app):
    client = app.test_client()
    for email, phone in (("ann@x.io", "111"), ("bob@x.io", "222"), ("Ann@X.io", "(2) 22")):
        response = client.post("/identify", json={"email": email, "phoneNumber": phone})
        assert response.status_code == 200
    db.session.rollback()
    try:
        downgrade(revision="0008_name_grams")
        # As the app before 0009 left them: a bond an agent made (keys) and row 2
        # deleted, so its values are held by no live row.
        db.session.execute(
            insert(Bond).values(
                contact_id=1,
                detail=json.dumps({"email": ["ann@x.io"], "phone": ["111", "999"]}),
                cause="link",
                actor="agent@example.com",
                created_at=utcnow(),
            )
        )
        db.session.execute(update(Contact).where(Contact.id == 2).values(deletedAt=utcnow()))
        db.session.commit()
    finally:
        upgrade()
    bonds = sorted(
        (bond.cause, bond.contact_id, bond.actor, json.loads(bond.detail))
        for bond in db.session.scalars(select(Bond))
    )
    assert bonds == [
        # The bridging request's values, from its merge row (the downgrade removed
        # the bond the app had written for it).
        ("checkout", 1, "checkout", {"email": ["ann@x.io"], "phone": ["222"]}),
        ("link", 1, "agent@example.com", {"email": ["ann@x.io"], "phone": ["111", "999"]}),
    ]
    keys = {
        (b.cause, k.kind, k.key) for k, b in db.session.execute(select(BondKey, Bond).join(Bond))
    }
    # 222 (deleted row 2) and 999 (never held) are withdrawn; the rest is found by key.
    assert keys == {
        ("link", "email", "ann@x.io"),
        ("link", "phone", "111"),
        ("checkout", "email", "ann@x.io"),
    }
    db.session.rollback()


def test_0012_composes_email_keys_everywhere_and_merges_claims_that_collide(app, runner):
    old_nfd, old_puny = "jose\u0301@example.com", "anna@xn--bcher-kva.de"
    new_nfd, new_puny = "jos\u00e9@example.com", "anna@b\u00fccher.de"
    now = utcnow()
    db.session.rollback()
    try:
        downgrade(revision="0011_session_epoch")
        # As the app before 0012 left them: keys lower-cased only.
        for contact_id, email, key in (
            (1, "Jose\u0301@example.com", old_nfd),
            (2, "anna@xn--bcher-kva.de", old_puny),
            (3, "plain@example.com", "plain@example.com"),
            # The same address typed precomposed: another customer until now.
            (4, "jos\u00e9@example.com", new_nfd),
        ):
            db.session.execute(
                insert(Contact).values(
                    id=contact_id, email=email, email_key=key, createdAt=now, updatedAt=now
                )
            )
            for gram in contact_grams(key, None):
                db.session.execute(insert(ContactGram).values(gram=gram, contact_id=contact_id))
        db.session.execute(
            insert(Identifier),
            [
                {"kind": "email", "key": old_nfd, "created_at": now},
                {
                    "kind": "email",
                    "key": old_puny,
                    "created_at": now,
                    "blocked_at": now,
                    "blocked_reason": "shared inbox",
                    "blocked_by": "agent@example.com",
                },
                # The composed form's claim exists already (written by a newer app).
                {"kind": "email", "key": new_puny, "created_at": now},
            ],
        )
        db.session.execute(
            insert(Bond).values(
                id=1, contact_id=1, detail="{}", cause="link", actor="a", created_at=now
            )
        )
        # The decomposed spelling was an account of its own beside the composed one.
        for email in (
            "agent@xn--bcher-kva.de",
            "plain-agent@example.com",
            "jose\u0301@example.com",
            "jos\u00e9@example.com",
        ):
            db.session.execute(insert(User).values(email=email, password_hash="x", created_at=now))
        db.session.execute(
            insert(BondKey),
            [
                {"bond_id": 1, "kind": "email", "key": old_nfd},
                {"bond_id": 1, "kind": "email", "key": new_nfd},
                {"bond_id": 1, "kind": "email", "key": old_puny},
            ],
        )
        db.session.commit()
    finally:
        upgrade()
    keys = dict(db.session.execute(select(Contact.id, Contact.email_key)).all())
    assert keys == {1: new_nfd, 2: new_puny, 3: "plain@example.com", 4: new_nfd}
    grams: dict[int, set[str]] = {}
    for gram, owner in db.session.execute(select(ContactGram.gram, ContactGram.contact_id)):
        grams.setdefault(owner, set()).add(gram)
    assert grams == {
        1: contact_grams(new_nfd, None),
        2: contact_grams(new_puny, None),
        3: contact_grams("plain@example.com", None),
        4: contact_grams(new_nfd, None),
    }
    claims = {
        (c.key, c.blocked_reason)
        for c in db.session.scalars(select(Identifier).where(Identifier.kind == "email"))
    }
    # One claim per key; the block on the punycode spelling stays on the one left.
    assert claims == {(new_nfd, None), (new_puny, "shared inbox")}
    bond_keys = set(db.session.scalars(select(BondKey.key)))
    assert bond_keys == {new_nfd, new_puny}
    agents = set(db.session.execute(select(User.email, User.is_active, User.session_epoch)))
    assert agents == {
        ("agent@b\u00fccher.de", True, 0),
        ("plain-agent@example.com", True, 0),
        # Sign-in finds the composed spelling now: the other is disabled, its sessions ended.
        ("jose\u0301@example.com", False, 1),
        ("jos\u00e9@example.com", True, 0),
    }
    db.session.rollback()
    # The whole-database run the README asks for merges the two spellings' customers.
    result = runner.invoke(args=["reconcile"])
    assert result.exit_code == 0, result.output
    links = dict(db.session.execute(select(Contact.id, Contact.linkedId)).all())
    assert links == {1: None, 2: None, 3: None, 4: 1}
    db.session.rollback()


def test_0013_keys_the_e_mail_each_voucher_was_redeemed_with(app, client, api_key):
    body = {"offer_name": "Welcome", "discount": 10, "expiry": "2999-01-01T00:00:00Z"}
    codes = []
    for email in ("lorraine@hillvalley.edu", "jose\u0301@example.com"):
        response = client.post("/vouchers/generate", json={**body, "email": email})
        assert response.status_code == 201, response.get_json()
        codes.append(response.get_json()["code"].replace("-", ""))
    redeemed = {"code": codes[0], "email": "  Lorraine@HillValley.EDU "}
    assert client.post("/vouchers/validate", json=redeemed).status_code == 200
    db.session.rollback()
    try:
        downgrade(revision="0012_composed_email_keys")
    finally:
        upgrade()
    keys = dict(db.session.execute(select(Voucher.code, Voucher.used_email_key)).all())
    assert keys == {codes[0]: "lorraine@hillvalley.edu", codes[1]: None}
    db.session.rollback()


def test_0014_names_the_customers_of_the_audit_entries_already_written(app, client):
    for email, phone in [("ann@x.io", "555"), ("bob@x.io", "556"), ("test@test.com", "555")]:
        assert (
            client.post("/identify", json={"email": email, "phoneNumber": phone}).status_code == 200
        )
    assert (
        client.post("/identify", json={"email": "test@test.com", "phoneNumber": "556"}).status_code
        == 200
    )
    set_blocked(
        parse_identifier("test@test.com"), True, actor="dana@support.example", reason="junk"
    )
    db.session.add(AuditEntry(actor="x", action="rename", customer_id=2, after='"not a state"'))
    db.session.commit()
    named = select(AuditCustomer.audit_entry_id, AuditCustomer.customer_id)
    expected = db.session.execute(named).all()
    db.session.rollback()
    assert [customer for _, customer in expected] == [2]
    try:
        downgrade(revision="0013_voucher_redeemer_key")
    finally:
        upgrade()
    assert db.session.execute(named).all() == expected
    db.session.rollback()


def test_0014_gives_older_voucher_entries_their_discount_in_percent(app, signed_in_client):
    # Found in diff review: entries written before this version hold the voucher's
    # hundredths (1250 for 12.5%), which the audit page would show as "discount: 1250%".
    identify([parse_email("ann@x.io")])
    expires = datetime(2999, 1, 1)
    for name, hundredths in (("Apology", 1250), ("Welcome", 1000)):
        issue_to_customer(1, name, hundredths, expires, actor="dana@support.example")
    entries = list(
        db.session.scalars(select(AuditEntry).where(AuditEntry.action == "issue_voucher"))
    )
    assert [json.loads(e.after)["discount"] for e in entries] == [12.5, 10]
    db.session.rollback()
    try:
        downgrade(revision="0013_voucher_redeemer_key")
        # As the version before wrote them: hundredths; one entry names no voucher left.
        for entry, hundredths in zip(entries, (1250, 1000), strict=True):
            state = {**json.loads(entry.after), "discount": hundredths}
            db.session.execute(
                update(AuditEntry)
                .where(AuditEntry.id == entry.id)
                .values(after=json.dumps(state, sort_keys=True))
            )
        db.session.execute(
            insert(AuditEntry).values(
                actor="x",
                action="issue_voucher",
                subject="voucher GONE",
                after='{"discount": 500}',
                created_at=utcnow(),
            )
        )
        db.session.commit()
    finally:
        upgrade()
    shown = db.session.execute(
        select(AuditEntry.subject, AuditEntry.after)
        .where(AuditEntry.action == "issue_voucher")
        .order_by(AuditEntry.id)
    ).all()
    assert [json.loads(after)["discount"] for _, after in shown] == [12.5, 10, 500]
    db.session.rollback()
    # Down and up again: entries already in percent are left as they are.
    try:
        downgrade(revision="0013_voucher_redeemer_key")
    finally:
        upgrade()
    again = db.session.scalars(
        select(AuditEntry.after).where(AuditEntry.action == "issue_voucher").order_by(AuditEntry.id)
    ).all()
    assert [json.loads(after)["discount"] for after in again] == [12.5, 10, 500]
    db.session.rollback()
    page = signed_in_client.get("/audit?action=issue_voucher").get_data(as_text=True)
    assert "<li>discount: 12.5%</li>" in page and "<li>discount: 10%</li>" in page


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_an_upgrade_on_sqlite_goes_through_while_the_service_writes(app, client, database_url):
    """The upgrade takes SQLite's write lock before it reads the schema's version.

    Begun as a plain (deferred) transaction, it read the version, and its
    first ALTER failed at once with "database is locked" when a worker was
    writing, whatever the busy timeout: an upgrade run before restarting a
    busy box failed every time.
    """
    assert client.post("/identify", json={"email": "busy@example.com"}).status_code == 200
    db.session.rollback()
    downgrade(revision="0012_composed_email_keys")
    worker = sqlite3.connect(
        make_url(database_url).database, timeout=0, isolation_level=None, check_same_thread=False
    )
    wrote = []

    def a_worker_writes_meanwhile(_conn, _cursor, statement, *_args):
        # A worker's write transaction, a third of a second long, begins just before the ALTER.
        if statement.startswith("ALTER TABLE") and not wrote:
            try:
                worker.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                assert "locked" in str(exc)
                wrote.append(False)  # the upgrade holds the write lock: the worker waits
                return
            worker.execute('UPDATE "Contact" SET "updatedAt" = "updatedAt"')
            wrote.append(True)
            threading.Timer(0.3, worker.execute, ["COMMIT"]).start()

    event.listen(db.engine, "before_cursor_execute", a_worker_writes_meanwhile)
    try:
        upgrade()
    finally:
        event.remove(db.engine, "before_cursor_execute", a_worker_writes_meanwhile)
        worker.close()
    assert wrote == [False]
    with db.engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
    assert version == HEAD_REVISION


def test_a_database_in_use_downgrades_to_empty_and_upgrades_again(empty_database_url):
    # Found by hand: rolling a release back with `flask db downgrade` stopped at
    # 0003 on MariaDB, which will not drop an index a foreign key needs.
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database_url, "TESTING": True})
    with app.app_context():
        upgrade()
        client = app.test_client()
        customer = client.post("/identify", json={"email": "a@example.com", "phoneNumber": "1"})
        assert customer.status_code == 200
        client.post("/identify", json={"email": "b@example.com", "phoneNumber": "2"})
        merged = client.post("/identify", json={"email": "a@example.com", "phoneNumber": "2"})
        assert merged.status_code == 200
        body = {"email": "a@example.com", "channel": "sms", "direction": "inbound", "name": "Ann"}
        assert client.post("/events", json=body).status_code == 201
        assert client.post("/calls/incoming", json={"phoneNumber": "1"}).status_code == 201
        primary = customer.get_json()["contact"]["primaryContactId"]
        issue_to_customer(primary, "Spring", 10, utcnow() + timedelta(days=30), actor="t")
        set_blocked(parse_identifier("+44 20 7946 0999"), True, actor="t", reason="switchboard")
        make_agent()
        downgrade(revision="base")
        assert sa_inspect(db.engine).get_table_names() == ["alembic_version"]
        upgrade()
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, db.metadata) == []
        db.engine.dispose()


def test_a_second_upgrade_started_meanwhile_waits_for_the_first(empty_database_url):
    """Two boxes' deploys both run ``db upgrade``, the second while the first is at 0001.

    Nothing stopped the second on MySQL/MariaDB: it read the same version and ran the
    same migrations, and the first then failed ("Table 'Contact' already exists"),
    with a traceback, half-way through. On SQLite the write lock only held it back
    for one migration at a time (or until the busy timeout, here). Now the second
    waits for the first's lock, then finds the database at the head and does nothing.
    """
    app = create_app({"SQLALCHEMY_DATABASE_URI": empty_database_url, "TESTING": True})
    environment = {k: v for k, v in os.environ.items() if k != "API_KEYS"}
    environment.update(DATABASE_URL=empty_database_url, SECRET_KEY="s" * 32)
    second: list[subprocess.Popen] = []
    said: list[str] = []

    def read(stream) -> None:
        said.extend(iter(stream.readline, ""))

    def the_other_box_upgrades_meanwhile(_conn, _cursor, statement, *_args):
        if second or "CREATE TABLE `Contact`" not in statement.replace('"', "`"):
            return
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "db", "upgrade"],
            cwd=ROOT,
            env=environment,
            stderr=subprocess.PIPE,
            text=True,
        )
        second.append(process)
        threading.Thread(target=read, args=(process.stderr,), daemon=True).start()
        # Until it says it waits, or it has run (and ended) on its own.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            if any("waiting for it to finish" in line for line in said):
                break
            time.sleep(0.05)

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", the_other_box_upgrades_meanwhile)
        try:
            upgrade()
        finally:
            event.remove(db.engine, "before_cursor_execute", the_other_box_upgrades_meanwhile)
            status = second[0].wait(timeout=120) if second else None
        output = "".join(said)
        assert status == 0, output
        assert "waiting for it to finish" in output
        assert "Running upgrade" not in output  # the first had done it all
        assert "Traceback" not in output
        with db.engine.connect() as conn:
            assert conn.scalar(text("SELECT version_num FROM alembic_version")) == HEAD_REVISION
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, db.metadata) == []
        db.engine.dispose()


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_0018_makes_the_blocked_index_hold_only_blocked_values_on_sqlite(app):
    # Each new customer's claim rows added an entry for "not blocked" to 0017's index, at
    # checkout; the blocked values page reads only the blocked ones.
    def index_sql():
        db.session.rollback()
        found = db.session.execute(
            text("SELECT sql FROM sqlite_master WHERE name = 'ix_identifier_blocked_at'")
        ).scalar_one()
        db.session.rollback()
        return " ".join(found.split())

    assert index_sql().endswith("WHERE blocked_at IS NOT NULL")
    try:
        downgrade(revision="0017_identifier_blocked_index")
        assert "WHERE" not in index_sql()
    finally:
        upgrade()
    assert index_sql().endswith("WHERE blocked_at IS NOT NULL")
