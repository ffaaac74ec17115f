"""API keys, the health check and start-up behaviour."""

import logging
import sqlite3
from contextlib import closing

import flask
import pytest
from flask_migrate import downgrade, upgrade
from sqlalchemy import text

from tests.builders import HEAD_REVISION, contacts
from tests.openapi_check import assert_matches_openapi
from webapp import create_app
from webapp.extensions import db


@pytest.fixture
def app_config(database_url):
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "TESTING": True,
        "API_KEYS": ["k-one", "k-two"],
    }


@pytest.mark.parametrize(
    "header",
    [None, "Bearer", "Bearer wrong", "Basic k-one", "k-one", "Bearer k-one-and-more"],
)
def test_identify_needs_a_valid_key_when_keys_are_set(client, header):
    headers = {"Authorization": header} if header else {}
    response = client.post("/identify", json={"email": "a@x.io"}, headers=headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "unauthorized"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert contacts() == []


@pytest.mark.parametrize("key", ["k-one", "k-two"])
def test_any_configured_key_is_accepted(client, key):
    response = client.post(
        "/identify", json={"email": "a@x.io"}, headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code == 200
    assert len(contacts()) == 1


def test_health_does_not_need_a_key(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok"}


def test_open_api_logs_a_warning_at_start(database_url, caplog):
    with caplog.at_level(logging.WARNING):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "API_KEYS": []})
    assert "API_KEYS is not set" in caplog.text


def test_flask_commands_do_not_repeat_the_warning(database_url, caplog):
    import click

    # As `flask --app wsgi users list` builds the app: inside the command's click context.
    with click.Context(click.Command("list"), info_name="list"), caplog.at_level(logging.WARNING):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "API_KEYS": []})
    assert "API_KEYS is not set" not in caplog.text
    with click.Context(click.Command("run"), info_name="run"), caplog.at_level(logging.WARNING):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "API_KEYS": []})
    assert "API_KEYS is not set" in caplog.text


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:////nonexistent-directory/for-sure/identity.db",
        "mysql+pymysql://root@127.0.0.1:1/test",
    ],
)
def test_health_is_503_when_the_database_does_not_answer(url):
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    client = app.test_client()
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "unreachable"}
    response = client.post("/identify", json={"email": "a@x.io"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "database_unavailable"


def test_the_rate_limiter_does_not_look_at_identify_or_healthz(client, monkeypatch):
    # The checkout's endpoints carry no limit; the limiter's per-request check
    # (limits, exemption scopes) is skipped for them, not run and then waived.
    import flask_limiter

    checked = []
    original = flask_limiter.Limiter._check_request_limit

    def counting(self, *args, **kwargs):
        checked.append(flask.request.endpoint)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(flask_limiter.Limiter, "_check_request_limit", counting)
    headers = {"Authorization": "Bearer k-one"}
    assert client.post("/identify", json={"email": "a@x.io"}, headers=headers).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert checked == []
    # Every other endpoint still goes through it.
    assert client.get("/openapi.json").status_code == 200
    assert checked == ["api.openapi"]


def test_health_is_503_until_the_schema_is_upgraded_for_this_code(app, client, caplog):
    db.session.rollback()
    downgrade(revision="0012_composed_email_keys")
    # The migration's logging set-up took caplog's handler off the root logger.
    logging.getLogger("webapp.api").addHandler(caplog.handler)
    try:
        response = client.get("/healthz")
        assert response.status_code == 503
        assert response.get_json() == {"status": "unavailable", "database": "not_upgraded"}
        assert_matches_openapi(app, "/healthz", "get", response)
    finally:
        logging.getLogger("webapp.api").removeHandler(caplog.handler)
        upgrade()
    assert client.get("/healthz").status_code == 200
    # The log says what to do, in the CLI's words, not as Python sets.
    assert (
        "health check failed: the database has schema revision 0012_composed_email_keys, "
        f"this version needs {HEAD_REVISION}; bring it up to date with: "
        "flask --app wsgi db upgrade"
    ) in caplog.text


def test_health_is_503_on_a_database_no_migration_ran_on(tmp_path, caplog):
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'empty.db'}"})
    with caplog.at_level(logging.WARNING, logger="webapp.api"):
        response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "database": "not_upgraded"}
    assert f"has schema revision none (no schema yet), this version needs {HEAD_REVISION}" in (
        caplog.text
    )


def test_a_schema_ahead_of_the_code_is_healthy(app, client):
    # Upgraded by a newer version whose workers are not all restarted yet: the old ones serve.
    (version,) = db.session.execute(text("SELECT version_num FROM alembic_version")).one()
    db.session.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    db.session.commit()
    try:
        assert client.get("/healthz").status_code == 200
    finally:
        db.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": version})
        db.session.commit()


def _health(url: str, caplog, damage) -> tuple[int, dict]:
    """GET /healthz on a fresh upgraded database after ``damage(engine)``."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade()
        client = app.test_client()
        assert client.get("/healthz").status_code == 200
        damage(db.engine)
        db.engine.dispose()
        logging.getLogger("webapp.api").addHandler(caplog.handler)
        try:
            response = client.get("/healthz")
        finally:
            logging.getLogger("webapp.api").removeHandler(caplog.handler)
        assert_matches_openapi(app, "/healthz", "get", response)
        db.engine.dispose()
    return response.status_code, response.get_json()


def test_health_is_503_when_a_table_the_checkout_reads_is_gone(empty_database_url, caplog):
    # Found by hand: with the claims table renamed, every /identify answered 503 while
    # the health check, which read only the schema revision, said ok.
    def rename(engine):
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE identifier RENAME TO identifier_kept")

    assert _health(empty_database_url, caplog, rename) == (
        503,
        {"status": "unavailable", "database": "unreadable"},
    )
    assert "health check failed: the checkout's read failed: " in caplog.text


def test_health_is_503_on_a_sqlite_file_damaged_where_the_checkout_reads(tmp_path, caplog):
    path = tmp_path / "damaged.db"

    def damage(engine):
        engine.dispose()
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            (page_size,) = conn.execute("PRAGMA page_size").fetchone()
            (root,) = conn.execute(
                "SELECT rootpage FROM sqlite_master WHERE name = 'ix_Contact_email_key'"
            ).fetchone()
        with path.open("r+b") as file:
            file.seek((root - 1) * page_size)
            file.write(b"\xff" * page_size)

    assert _health(f"sqlite:///{path}", caplog, damage) == (
        503,
        {"status": "unavailable", "database": "unreadable"},
    )
    assert "malformed" in caplog.text


@pytest.mark.parametrize(
    "method, path, body",
    [
        ("post", "/identify", {"email": "a@x.io"}),
        ("post", "/identify", {}),
        ("get", "/api/v1/customers/lookup?email=a@x.io", None),
        ("get", "/vouchers?email=a@x.io", None),
        ("post", "/vouchers/validate", {"code": "NOT-A-CODE", "email": "a@x.io"}),
        ("post", "/events", {"channel": "sms"}),
    ],
)
def test_api_answers_are_not_stored_by_caches(client, method, path, body):
    # Found in the security review: the dashboard's pages said no-store, the API's answers
    # (a customer's e-mails, phones and vouchers) said nothing, so a shared cache could keep them.
    key = {"Authorization": "Bearer k-one"}
    client.post("/identify", json={"email": "a@x.io", "phoneNumber": "123456"}, headers=key)
    response = getattr(client, method)(path, json=body, headers=key)
    assert response.status_code < 500
    assert response.headers["Cache-Control"] == "no-store"
