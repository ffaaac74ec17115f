"""``flask`` commands on a database they cannot use: one clear error, no driver traceback."""

from __future__ import annotations

import os

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from tests.conftest import MYSQL_SERVER_URL, _mariadb_database_url
from webapp import create_app
from webapp.extensions import db

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


@pytest.fixture
def empty_database_url(dialect, tmp_path):
    """A reachable database with no tables at all."""
    if dialect == "sqlite":
        yield f"sqlite:///{tmp_path / 'identity.db'}"
        return
    name = f"identity_test_{os.getpid()}_empty"
    server = sa.create_engine(MYSQL_SERVER_URL.rstrip("/") + "/")
    with server.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
        conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    yield _mariadb_database_url(name)
    with server.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    server.dispose()


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
    _assert_refused(_run(url, args), "could not reach the database", "unable to open", UPGRADE)


def test_an_unreachable_mariadb_is_named_without_its_password(tmp_path):
    # Port 1 on the loopback: nothing listens there, so the connection is refused at once.
    url = "mysql+pymysql://identity:hunter2secret@127.0.0.1:1/identity"
    result = _run(url, ["users", "list"])
    _assert_refused(result, "could not reach the database", "127.0.0.1:1", "2003")
    assert "hunter2secret" not in result.output


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
        "has schema revision 0012_composed_email_keys, this version needs 0013_",
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
