"""Engine settings per dialect the concurrency design depends on; queries sent to the driver."""

import json
import time
import urllib.error
import urllib.request

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import DBAPIError

from tests.builders import TEST_API_KEY, assert_invariants, identify, post_once
from tests.conftest import LiveServer, StallingProxy
from webapp import create_app
from webapp.database import DriverQuery, driver_query, driver_rows
from webapp.extensions import db
from webapp.models import Contact, utcnow


def test_engine_settings_per_dialect(app, dialect):
    with db.engine.connect() as conn:
        if dialect == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            assert busy == app.config["SQLITE_BUSY_TIMEOUT_MS"]
            pages = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            assert pages == app.config["SQLITE_WAL_AUTOCHECKPOINT"] == 16000
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar()
            limit = conn.exec_driver_sql("PRAGMA journal_size_limit").scalar()
            assert limit == pages * page_size
        else:
            level = conn.exec_driver_sql("SELECT @@session.tx_isolation").scalar()
            assert level == "READ-COMMITTED"
            charset = conn.exec_driver_sql("SELECT @@character_set_client").scalar()
            assert charset == "utf8mb4"


@pytest.mark.parametrize("pages", [0, -1])
def test_a_wal_that_would_never_be_checkpointed_is_refused_at_start(tmp_path, pages):
    url = f"sqlite:///{tmp_path / 'identity.db'}"
    with pytest.raises(ValueError, match="SQLITE_WAL_AUTOCHECKPOINT"):
        create_app({"SQLALCHEMY_DATABASE_URI": url, "SQLITE_WAL_AUTOCHECKPOINT": pages})


def test_unicode_email_round_trips(client, app):
    response = client.post("/identify", json={"email": "zoë.ünïcødé@exämple.de"})
    assert response.status_code == 200
    assert response.get_json()["contact"]["emails"] == ["zoë.ünïcødé@exämple.de"]
    again = client.post("/identify", json={"email": "ZOË.ÜNÏCØDÉ@EXÄMPLE.DE"})
    assert again.get_json()["contact"]["primaryContactId"] == 1


def _pool_of(dialect: str, size: int) -> list:
    """A fresh pool holding ``size`` idle connections: (driver connection, MariaDB thread id)."""
    db.engine.dispose()
    held = [db.engine.connect() for _ in range(size)]
    pooled = []
    for conn in held:
        thread = None
        if dialect != "sqlite":
            thread = conn.exec_driver_sql("SELECT CONNECTION_ID()").scalar()
            conn.rollback()
        pooled.append((conn.connection.dbapi_connection, thread))
    for conn in held:
        conn.close()
    return pooled


def _drop_all(dialect: str, pooled: list) -> None:
    """End pooled connections behind the pool's back, as a restarted server would."""
    if dialect == "sqlite":
        for driver, _ in pooled:
            driver.close()
        return
    killer = sa.create_engine(db.engine.url)
    with killer.connect() as conn:
        for _, thread in pooled:
            conn.exec_driver_sql(f"KILL {int(thread)}")
    killer.dispose()


@pytest.mark.parametrize("pooled", [1, 3])
def test_identify_survives_pooled_connections_the_server_dropped(client, dialect, pooled):
    status, first = identify(client, "doc@hillvalley.edu", "1985")
    assert status == 200
    _drop_all(dialect, _pool_of(dialect, pooled))
    # The read pass meets a dead connection first: it and the rest of the pool
    # are discarded, as after a database restart, and the read runs again.
    status, again = identify(client, "doc@hillvalley.edu", "1985")
    assert (status, again) == (200, first)
    # A new value: the read pass, then the write transaction, each on a fresh connection.
    _drop_all(dialect, _pool_of(dialect, pooled))
    status, body = identify(client, "marty@hillvalley.edu", "1985")
    assert status == 200
    assert body["contact"]["emails"] == ["doc@hillvalley.edu", "marty@hillvalley.edu"]
    assert_invariants()


def test_driver_errors_come_out_as_sqlalchemy_errors(app):
    query = DriverQuery(sql="SELECT nothing FROM no_such_table", order=(), fixed={}, processors=())
    with db.engine.connect() as conn:
        with pytest.raises(DBAPIError) as raised:
            driver_rows(conn, query, {})
        assert not raised.value.connection_invalidated
        # The connection is still good for the next statement.
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1


def test_driver_query_refuses_parameters_the_driver_cannot_take_as_they_are():
    sqlite_dialect = sqlite.dialect()
    c = Contact.__table__.c
    with pytest.raises(ValueError, match="cannot go to the driver"):
        driver_query(sqlite_dialect, sa.select(c.id).where(c.id.in_([1, 2])))
    with pytest.raises(ValueError, match="cannot go to the driver"):
        driver_query(sqlite_dialect, sa.select(c.id).where(c.createdAt > utcnow()))
    query = driver_query(sqlite_dialect, sa.select(c.id, c.createdAt).where(c.email_key == "x"))
    assert query.order and query.fixed == {query.order[0]: "x"}
    # SQLite hands createdAt back as text: the column type turns it into a datetime.
    assert query.processors[0] is None and query.processors[1] is not None


def test_a_customer_whose_rows_share_a_value_is_read_once_per_row(client, app, monkeypatch):
    """The group read names each customer once, however many of its rows hold the value.

    Joined from every holder, a customer of N rows sharing a phone (a shop's
    switchboard number, say) came back N x N times: 200 rows cost a fifth of a
    second per request, and an event batch naming it timed the worker out.
    """
    from tests.builders import many_rows_customer
    from webapp.identity import service

    ids = many_rows_customer(60)
    fetched = []
    real = service.driver_rows

    def counting(conn, query, params):
        records = real(conn, query, params)
        fetched.append(len(records))
        return records

    monkeypatch.setattr(service, "driver_rows", counting)
    status, body = identify(client, "junk7@x.io", "555 0000")
    assert status == 200 and body["contact"]["primaryContactId"] == ids[0]
    assert len(body["contact"]["secondaryContactIds"]) == 59
    # The read pass: 60 rows and the blocked-flags row, each once.
    assert fetched == [61]
    fetched.clear()
    status, body = identify(client, "new@x.io", "5550000")  # a new e-mail: the locked read too
    assert status == 200 and len(body["contact"]["secondaryContactIds"]) == 60
    assert max(fetched) == 61


@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_database_that_stops_answering_is_a_503_before_gunicorn_gives_up(app, database_url):
    """A MariaDB that takes connections and never answers (packets dropped, a stuck server).

    The app's connections had no read time-out: every request waited for as long as
    the database hung, the health check too, until gunicorn killed the worker (a 500
    after 30 s) or, with threads, for ever. A statement that gets no answer for a lock
    wait and 5 s now fails, and the request answers 503 ``database_unavailable``.
    """
    url = sa.make_url(database_url)
    proxy = StallingProxy(url.host, url.port or 3306)
    through_proxy = url.set(host="127.0.0.1", port=proxy.port)
    server = LiveServer(
        through_proxy.render_as_string(hide_password=False),
        workers=1,
        env={"API_KEYS": TEST_API_KEY, "MYSQL_LOCK_WAIT_TIMEOUT_S": "1"},
    )
    try:
        assert post_once(server.url, "/identify", {"email": "doc@hillvalley.edu"})[0] == 200
        proxy.stall()
        started = time.monotonic()
        status, body = post_once(server.url, "/identify", {"email": "doc@hillvalley.edu"})
        # A read of 6 s (1 s lock wait + 5), then once more on a new connection.
        assert time.monotonic() - started < 20
        assert (status, body["error"]["code"]) == (503, "database_unavailable")
        with pytest.raises(urllib.error.HTTPError) as health:
            urllib.request.urlopen(server.url + "/healthz", timeout=60)
        assert health.value.code == 503
        assert json.loads(health.value.read())["database"] == "unreachable"
        proxy.resume()
        assert post_once(server.url, "/identify", {"email": "doc@hillvalley.edu"})[0] == 200
    finally:
        server.stop()
        proxy.close()
