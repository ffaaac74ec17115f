"""The schema comes only from migrations: they build it, and it matches the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import select

from webapp.extensions import db
from webapp.identity.search_index import ContactGram, name_grams


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
