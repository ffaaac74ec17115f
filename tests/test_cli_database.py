"""``flask`` commands on a database they cannot use: one clear error, no driver traceback."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from tests.builders import HEAD_REVISION
from tests.conftest import _mariadb_database_url
from webapp import create_app
from webapp.extensions import db
from webapp.models import User
from webapp.reconcile.models import ReconcileJob

UPGRADE = "flask --app wsgi db upgrade"


def _commands(tmp_path) -> list[list[str]]:
    """One invocation of every command that uses the database."""
    emails = tmp_path / "emails.txt"
    emails.write_text("a@example.com\n")
    return [
        ["users", "list"],
        ["users", "create", "dana@support.example", "--password", "long enough secret"],
        ["users", "disable", "dana@support.example"],
        ["search", "reindex"],
        ["reconcile"],
        [
            "vouchers",
            "generate",
            "--offer",
            "Summer",
            "--discount",
            "10",
            "--expiry",
            "2099-12-31T23:59:59+00:00",
            "--emails",
            str(emails),
        ],
    ]


def _run(url: str, args: list[str]):
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    try:
        return app.test_cli_runner().invoke(args=args)
    finally:
        with app.app_context():
            db.engine.dispose()


def _assert_refused(result, *expected: str) -> None:
    assert result.exit_code == 1, result.output
    # A ClickException ends in SystemExit; a traceback would leave the driver's error here.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    for text in expected:
        assert text in result.output
    assert "SELECT" not in result.output
    assert "Traceback" not in result.output


def test_every_command_on_a_database_without_schema_says_to_upgrade(empty_database_url, tmp_path):
    for args in _commands(tmp_path):
        result = _run(empty_database_url, args)
        _assert_refused(result, "has no schema yet", UPGRADE)
    # Nothing was done: no codes file, and still no table.
    assert not (tmp_path / "emails-codes.csv").exists()
    engine = sa.create_engine(empty_database_url)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


@pytest.mark.parametrize("args", [["users", "list"], ["reconcile"], ["search", "reindex"]])
def test_a_sqlite_file_in_a_missing_folder_is_reported_as_unreachable(tmp_path, args):
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'identity.db'}"
    _assert_refused(
        _run(url, args),
        "could not reach the database",
        "unable to open",
        # SQLite says the same of a folder this user cannot write, where "Check
        # DATABASE_URL" alone sent the operator looking at a URL that was right.
        f"that the folder {tmp_path / 'no-such-folder'} exists and this user can write to it",
        UPGRADE,
    )


def test_an_unreachable_mariadb_is_named_without_its_password(tmp_path):
    # Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    url = "mysql+pymysql://identity:hunter2secret@127.0.0.1:1/identity"
    result = _run(url, ["users", "list"])
    _assert_refused(result, "could not reach the database", "127.0.0.1:1", "2003")
    assert "hunter2secret" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "sqlite:///{tmp_path}/no-such-folder/identity.db",
        "mysql+pymysql://identity:hunter2secret@127.0.0.1:1/identity",
    ],
)
@pytest.mark.parametrize("args", [["db", "upgrade"], ["db", "current"]])
def test_db_commands_on_an_unreachable_database_say_so_in_one_line(tmp_path, url, args):
    # `db upgrade` is the first command an operator runs against a new DATABASE_URL.
    result = _run(url.format(tmp_path=tmp_path), args)
    _assert_refused(result, "could not reach the database", "Check DATABASE_URL")
    if url.startswith("sqlite"):
        assert f"the folder {tmp_path}/no-such-folder exists and this user can write" in (
            result.output
        )
    assert "hunter2secret" not in result.output
    assert "OperationalError" not in result.output


def test_an_upgrade_lock_sqlite_cannot_open_is_said_in_one_line(tmp_path):
    # Two upgrades at once take turns on a file beside the database (migrations/env.py).
    (tmp_path / "identity.db-upgrade-lock").mkdir()
    result = _run(f"sqlite:///{tmp_path}/identity.db", ["db", "upgrade"])
    _assert_refused(result, "could not open the upgrade lock", "write to the database's folder")


def test_a_missing_mariadb_database_is_reported(database_urls):
    if database_urls["mariadb"] is None:
        pytest.skip("MariaDB is not reachable (set REQUIRE_MARIADB=1 to make this a failure)")
    url = _mariadb_database_url(f"identity_test_{os.getpid()}_never_made")
    _assert_refused(_run(url, ["users", "list"]), "could not reach the database", "1049")


def test_a_schema_from_an_older_version_says_to_upgrade(tmp_path):
    url = f"sqlite:///{tmp_path / 'identity.db'}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade(revision="0012_composed_email_keys")
        db.engine.dispose()
    result = _run(url, ["users", "list"])
    _assert_refused(
        result,
        f"has schema revision 0012_composed_email_keys, this version needs {HEAD_REVISION}",
        UPGRADE,
    )


def test_a_schema_this_version_does_not_know_is_named(tmp_path):
    url = f"sqlite:///{tmp_path / 'identity.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('9999_from_the_future')")
    engine.dispose()
    result = _run(url, ["users", "list"])
    _assert_refused(result, "revision 9999_from_the_future, which this version does not know")
    assert UPGRADE not in result.output


def test_a_migrated_database_runs_the_command(app, runner):
    result = runner.invoke(args=["users", "list"])
    assert result.exit_code == 0, result.output
    assert "no agents yet" in result.output


@pytest.fixture
def app_config(database_url) -> dict:
    # Lock waits short enough for a test: a writer that cannot get in gives up in about a second.
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "TESTING": True,
        "SQLITE_BUSY_TIMEOUT_MS": 300,
        "MYSQL_LOCK_WAIT_TIMEOUT_S": 1,
        "IDENTIFY_MAX_ATTEMPTS": 2,
    }


@pytest.mark.parametrize(
    "args",
    [
        ["users", "create", "dana@support.example", "--password", "long enough secret"],
        ["reconcile"],
    ],
)
def test_a_database_that_fails_during_the_command_is_one_line_not_a_traceback(
    app, runner, dialect, args
):
    # Another writer holds what the command needs, uncommitted: on SQLite the write lock;
    # on MariaDB the keys of the agent being created and of the one active run.
    other = db.engine.connect()
    try:
        other.execute(
            sa.insert(User).values(email="dana@support.example", password_hash="x", is_active=True)
        )
        other.execute(sa.insert(ReconcileJob).values(actor="someone", status="queued", active=1))
        result = runner.invoke(args=args)
    finally:
        other.rollback()
        other.close()
    _assert_refused(result, "what the command had saved before stays", "Run it again")
    assert "locked" in result.output or "1205" in result.output
    assert result.output.count("\n") == 1, result.output


def test_a_database_error_other_than_a_lock_is_named_by_its_kind(tmp_path):
    # The schema check passes (alembic's table says the newest revision) but a table the
    # command reads is gone: SQLite answers OperationalError, as it does for a failed disk.
    url = f"sqlite:///{tmp_path / 'identity.db'}"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    with app.app_context():
        upgrade()
        with db.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE user")
        db.engine.dispose()
    result = _run(url, ["users", "list"])
    _assert_refused(
        result,
        "the database failed during the command (OperationalError: no such table: user)",
        "Run it again once the database answers.",
    )
