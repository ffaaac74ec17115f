"""The schema comes only from migrations: they build it, and it matches the models."""

import json

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import insert, select, update

from webapp.extensions import db
from webapp.identity.search_index import ContactGram, name_grams
from webapp.models import Bond, BondKey, Contact, utcnow


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
