"""Fixtures: the app on SQLite and on MariaDB, its client and CLI runner, and a live gunicorn.

Every test that takes ``app`` (or ``client``/``runner``) runs twice, once per
database. The schema comes from the migrations, applied once per session;
between tests every table is emptied.

MariaDB is found at TEST_MYSQL_URL (default: root on 127.0.0.1:3306). When it
is unreachable its tests are skipped, except under CI=true or
REQUIRE_MARIADB=1, where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade

from webapp import create_app
from webapp.extensions import db

ROOT = Path(__file__).resolve().parent.parent
MYSQL_SERVER_URL = os.environ.get("TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306")
MARIADB_REQUIRED = os.environ.get("CI") == "true" or os.environ.get("REQUIRE_MARIADB") == "1"
DIALECTS = ["sqlite", "mariadb"]
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _mariadb_database_url(name: str) -> str:
    return f"{MYSQL_SERVER_URL.rstrip('/')}/{name}?charset=utf8mb4"


@pytest.fixture(scope="session")
def database_urls(tmp_path_factory):
    """One migrated database per dialect for this test session: {dialect: url or None}."""
    urls: dict[str, str | None] = {}
    sqlite_file = tmp_path_factory.mktemp("sqlite") / "identity.db"
    urls["sqlite"] = f"sqlite:///{sqlite_file}"

    # A database per pytest process, so that parallel runs never share rows.
    name = f"identity_test_{os.getpid()}"
    server = sa.create_engine(MYSQL_SERVER_URL.rstrip("/") + "/", pool_pre_ping=True)
    try:
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
            conn.exec_driver_sql(
                f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            )
        urls["mariadb"] = _mariadb_database_url(name)
    except sa.exc.OperationalError as exc:
        if MARIADB_REQUIRED:
            pytest.fail(f"MariaDB is required but unreachable at {MYSQL_SERVER_URL}: {exc}")
        urls["mariadb"] = None

    for url in urls.values():
        if url:
            app = create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
            with app.app_context():
                upgrade()
                db.engine.dispose()
    yield urls
    if urls["mariadb"]:
        with server.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    server.dispose()


def _empty_tables(engine: sa.Engine) -> None:
    tables = [t for t in reversed(db.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            for table in tables:
                conn.execute(table.delete())
        else:
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 0")
            for table in tables:
                conn.exec_driver_sql(f"TRUNCATE TABLE `{table.name}`")
            conn.exec_driver_sql("SET FOREIGN_KEY_CHECKS = 1")


@pytest.fixture(params=DIALECTS)
def dialect(request, database_urls) -> str:
    """The database this test runs on: 'sqlite' or 'mariadb'."""
    if database_urls[request.param] is None:
        pytest.skip("MariaDB is not reachable (set REQUIRE_MARIADB=1 to make this a failure)")
    return request.param


@pytest.fixture
def database_url(dialect, database_urls) -> str:
    """SQLAlchemy URL of this test's (empty, migrated) database."""
    return database_urls[dialect]


@pytest.fixture
def empty_database_url(dialect, tmp_path):
    """A reachable database of the test's dialect with no tables at all, dropped afterwards."""
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


@pytest.fixture
def app_config(database_url) -> dict:
    """Settings the ``app`` fixture passes to create_app; override to change them."""
    return {"SQLALCHEMY_DATABASE_URI": database_url, "TESTING": True}


class _RunProcesses:
    """``subprocess`` as webapp.reconcile.jobs sees it, keeping the runs it starts.

    The dashboard starts a whole-database run as a process of its own; one
    still running after its test would write into the next test's rows, or
    fail loudly once the database is gone.
    """

    DEVNULL = subprocess.DEVNULL

    def __init__(self):
        self.started: list[subprocess.Popen] = []

    def Popen(self, *args, **kwargs):  # the name launch() calls
        process = subprocess.Popen(*args, **kwargs)
        self.started.append(process)
        return process

    def wait_all(self) -> None:
        while self.started:
            self.started.pop().wait(timeout=120)


@pytest.fixture(scope="session", autouse=True)
def reconcile_processes():
    from webapp.reconcile import jobs

    processes = _RunProcesses()
    jobs.subprocess = processes
    yield processes
    jobs.subprocess = subprocess


@pytest.fixture
def app(app_config, reconcile_processes):
    """The real application on this test's database, emptied afterwards."""
    application = create_app(app_config)
    with application.app_context():
        yield application
        # A whole-database run the test started ends before its rows go.
        reconcile_processes.wait_all()
        db.session.remove()
        _empty_tables(db.engine)
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def api_key(app, client) -> str:
    """API_KEYS set, and ``client`` sending the key: the voucher API and the lookup need one."""
    from tests.builders import TEST_API_KEY

    app.config["API_KEYS"] = [TEST_API_KEY]
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TEST_API_KEY}"
    return TEST_API_KEY


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def agent(app):
    """A dashboard agent (tests.builders.AGENT_EMAIL / AGENT_PASSWORD)."""
    from tests.builders import make_agent

    return make_agent()


@pytest.fixture
def signed_in_client(client, agent):
    """A test client signed in as ``agent``; it sends X-CSRFToken on every request, as htmx does."""
    from tests.builders import sign_in

    sign_in(client)
    return client


@pytest.fixture
def redis_url() -> str:
    """The real Redis the rate limits are shared through; skipped (or failed in CI) if absent."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        if MARIADB_REQUIRED or os.environ.get("REQUIRE_REDIS") == "1":
            pytest.fail(f"Redis is required but unreachable at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis is not reachable at {REDIS_URL}")
    return REDIS_URL


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    """A gunicorn serving wsgi:app on a loopback port, for tests over real connections."""

    def __init__(self, database_url: str, workers: int, env: dict[str, str] | None = None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if k != "API_KEYS"}
        environment.update({"DATABASE_URL": database_url, **(env or {})})
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--workers",
                str(workers),
                "--threads",
                "4",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--log-level",
                "warning",
                "wsgi:app",
            ],
            cwd=ROOT,
            env=environment,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("gunicorn exited during start-up")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("gunicorn did not answer within 30 s")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class StallingProxy:
    """A TCP proxy on a loopback port in front of ``host:port`` that can stop answering.

    While stalled it forwards nothing either way and opens nothing upstream, though it
    still takes connections: a database that hangs (a network dropping its packets, a
    stuck server), not one that refuses.
    """

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.running = threading.Event()
        self.running.set()
        self.closed = False
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def stall(self) -> None:
        self.running.clear()

    def resume(self) -> None:
        self.running.set()

    def close(self) -> None:
        self.closed = True
        self.running.set()
        self.listener.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._open, args=(client,), daemon=True).start()

    def _open(self, client: socket.socket) -> None:
        self.running.wait()
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        for source, target in ((client, server), (server, client)):
            threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self.running.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def live_server(app, database_url):
    """gunicorn with 4 workers on this test's database (the ``app`` fixture empties it).

    It has the tests' API key configured, which ``post_json`` sends.
    """
    from tests.builders import TEST_API_KEY

    server = LiveServer(database_url, workers=4, env={"API_KEYS": TEST_API_KEY})
    yield server
    server.stop()
