"""Settings are checked at start: a typo stops the app with its name, never runs as a default."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from webapp import create_app

ROOT = Path(__file__).resolve().parent.parent


def _closed_port() -> int:
    """A local port nothing listens on: one the system just handed out and took back."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CLOSED_PORT = _closed_port()
CLUSTER_UNREACHABLE = (
    "RATELIMIT_STORAGE_URI names a Redis cluster whose nodes cannot be reached, "
    "or servers that are not a cluster (redis:// is for one server)"
)


@pytest.fixture
def settings(tmp_path) -> dict:
    return {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/x.db", "TESTING": True}


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IDENTIFY_MAX_ATTEMPTS", "abc", "IDENTIFY_MAX_ATTEMPTS must be a whole number, not 'abc'"),
        ("IDENTIFY_MAX_ATTEMPTS", "0", "IDENTIFY_MAX_ATTEMPTS must be at least 1, not 0"),
        ("TRUSTED_PROXIES", "-1", "TRUSTED_PROXIES must be at least 0, not -1"),
        ("SQLITE_BUSY_TIMEOUT_MS", "-5", "SQLITE_BUSY_TIMEOUT_MS must be at least 0"),
        ("PERMANENT_SESSION_LIFETIME", "12h", "PERMANENT_SESSION_LIFETIME must be a whole number"),
        ("RECONCILE_BATCH_SIZE", "1e3", "RECONCILE_BATCH_SIZE must be a whole number"),
        ("HSTS_SECONDS", "-1", "HSTS_SECONDS must be at least 0"),
        ("SESSION_COOKIE_SECURE", "ture", "SESSION_COOKIE_SECURE must be 1 or 0"),
        ("SIGN_IN_LIMIT_PER_ACCOUNT", "bogus", "SIGN_IN_LIMIT_PER_ACCOUNT must be a rate limit"),
        ("SIGN_IN_LIMIT_PER_ADDRESS", "", "SIGN_IN_LIMIT_PER_ADDRESS must be a rate limit"),
        ("VOUCHER_VALIDATE_LIMIT_PER_CLIENT", "30 per fortnight", "VOUCHER_VALIDATE_LIMIT"),
        ("VOUCHER_VALIDATE_LIMIT_PER_CODE", "ten per minute", "VOUCHER_VALIDATE_LIMIT_PER_CODE"),
        # A limit of 0 parsed, and then nobody could ever sign in.
        (
            "SIGN_IN_LIMIT_PER_ACCOUNT",
            "0 per minute",
            "SIGN_IN_LIMIT_PER_ACCOUNT must allow at least 1 request in each window, "
            "not '0 per minute'",
        ),
        ("SIGN_IN_LIMIT_PER_ADDRESS", "30 per hour;0/day", "SIGN_IN_LIMIT_PER_ADDRESS must allow"),
        ("VOUCHER_VALIDATE_LIMIT_PER_CLIENT", "0 per second", "VOUCHER_VALIDATE_LIMIT_PER_CLIENT"),
        (
            "VOUCHER_VALIDATE_LIMIT_PER_CODE",
            "00 per minute",
            "VOUCHER_VALIDATE_LIMIT_PER_CODE must",
        ),
        # Numbers that overflowed (or that SQLite silently took as 0) have a most.
        (
            "RECONCILE_BATCH_SIZE",
            "9999999999999999999",
            "RECONCILE_BATCH_SIZE must be at most 10000, not 9999999999999999999",
        ),
        ("RECONCILE_BATCH_SIZE", "10001", "RECONCILE_BATCH_SIZE must be at most 10000, not 10001"),
        (
            "PERMANENT_SESSION_LIFETIME",
            "9999999999999999999",
            "PERMANENT_SESSION_LIFETIME must be at most 315360000",
        ),
        ("PERMANENT_SESSION_LIFETIME", 315360001, "PERMANENT_SESSION_LIFETIME must be at most"),
        (
            "SQLITE_BUSY_TIMEOUT_MS",
            "2147483648",
            "SQLITE_BUSY_TIMEOUT_MS must be at most 2147483647",
        ),
        ("SQLITE_WAL_AUTOCHECKPOINT", "2147483648", "SQLITE_WAL_AUTOCHECKPOINT must be at most"),
        ("IDENTIFY_MAX_ATTEMPTS", "101", "IDENTIFY_MAX_ATTEMPTS must be at most 100, not 101"),
        ("TRUSTED_PROXIES", "101", "TRUSTED_PROXIES must be at most 100, not 101"),
        ("HSTS_SECONDS", "315360001", "HSTS_SECONDS must be at most 315360000"),
        ("HSTS_SECONDS", "-" + "9" * 40, "HSTS_SECONDS must be at least 0, not -999"),
        ("HSTS_SECONDS", "9" * 5000, "HSTS_SECONDS must be at most 315360000, not 999"),
        ("MYSQL_LOCK_WAIT_TIMEOUT_S", "0", "MYSQL_LOCK_WAIT_TIMEOUT_S must be at least 1, not 0"),
        ("MYSQL_LOCK_WAIT_TIMEOUT_S", "3601", "MYSQL_LOCK_WAIT_TIMEOUT_S must be at most 3600"),
        ("SCREEN_POP_TIMEOUT_S", "5m", "SCREEN_POP_TIMEOUT_S must be a whole number, not '5m'"),
        ("SCREEN_POP_TIMEOUT_S", "-1", "SCREEN_POP_TIMEOUT_S must be at least 0, not -1"),
        ("SCREEN_POP_TIMEOUT_S", "86401", "SCREEN_POP_TIMEOUT_S must be at most 86400, not 86401"),
        # A key one can guess from one signed cookie, offline.
        (
            "SECRET_KEY",
            " ",
            "SECRET_KEY must be at least 32 characters, not 1; for example: python -c",
        ),
        ("SECRET_KEY", "my-company-secret", "SECRET_KEY must be at least 32 characters, not 17"),
        # Keys from variables that were empty: the API was left open, silently.
        (
            "API_KEYS",
            " , ",
            "API_KEYS is set (' , ') but holds no key; give keys separated by commas, "
            "or unset it to leave the checkout's endpoints open",
        ),
        (
            "API_KEYS",
            "k-one-secret k-two-secret",
            "API_KEYS key 1 of 1 holds a space or a character that is not printable ASCII",
        ),
        ("API_KEYS", "k-one-secret-0123,k-twö-secret", "API_KEYS key 2 of 2 holds a space"),
        # Short enough to find by trying, at checkout speed.
        (
            "API_KEYS",
            "a-long-enough-secret,k2-secret",
            "API_KEYS key 2 of 2 is 9 characters; each must be at least 16, for example: "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))'",
        ),
        # A storage the service has no client for failed in every worker with a traceback.
        (
            "RATELIMIT_STORAGE_URI",
            "memcached://pw-secret@cache:11211",
            "RATELIMIT_STORAGE_URI must be memory:// or a Redis URL such as redis://host:6379, "
            "not memcached://...",
        ),
        ("RATELIMIT_STORAGE_URI", "redis", "not a value with no scheme"),
        ("RATELIMIT_STORAGE_URI", "REDIS://cache:6379", "not REDIS://..."),
        ("RATELIMIT_STORAGE_URI", "async+redis://cache", "RATELIMIT_STORAGE_URI must be"),
        ("RATELIMIT_STORAGE_URI", "", "RATELIMIT_STORAGE_URI must be"),
        (
            "RATELIMIT_STORAGE_URI",
            "redis://:pw-secret@cache:63a9",
            "RATELIMIT_STORAGE_URI is not a Redis URL the client can read",
        ),
        ("RATELIMIT_STORAGE_URI", "redis+sentinel://sentinel/main", "not a Redis URL the client"),
        # urlsplit refused it with a bare ValueError: a traceback in gunicorn's master.
        (
            "RATELIMIT_STORAGE_URI",
            "redis://:pw-secret@[::1:6379",
            "RATELIMIT_STORAGE_URI is not a Redis URL the client can read",
        ),
        # A cluster's client connects when made: one that is down was a traceback.
        (
            "RATELIMIT_STORAGE_URI",
            f"redis+cluster://:pw-secret@127.0.0.1:{CLOSED_PORT}",
            CLUSTER_UNREACHABLE,
        ),
    ],
)
def test_a_bad_setting_stops_the_app_naming_it(settings, name, value, message):
    with pytest.raises(ValueError) as refused:
        create_app({**settings, name: value})
    assert message in str(refused.value)
    assert "-secret" not in str(refused.value)


def test_api_keys_from_the_environment_are_split_at_commas(tmp_path):
    env = {
        **os.environ,
        "API_KEYS": " k-one-0123456789 , k-two-0123456789,",
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    script = "import json, wsgi; print(json.dumps(wsgi.app.config['API_KEYS']))"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["k-one-0123456789", "k-two-0123456789"]


@pytest.mark.parametrize(
    "uri", ["memory://", "redis://:pw@cache:6379/0", "rediss://cache", "redis+sentinel://s:26379/m"]
)
def test_the_rate_limit_storages_requirements_install_are_accepted(settings, uri):
    assert create_app({**settings, "RATELIMIT_STORAGE_URI": uri})


@pytest.mark.parametrize(
    ("name", "most"),
    [
        ("IDENTIFY_MAX_ATTEMPTS", 100),
        ("SQLITE_BUSY_TIMEOUT_MS", 2**31 - 1),
        ("SQLITE_WAL_AUTOCHECKPOINT", 2**31 - 1),
        ("TRUSTED_PROXIES", 100),
        ("RECONCILE_BATCH_SIZE", 10000),
        ("PERMANENT_SESSION_LIFETIME", 315360000),
        ("HSTS_SECONDS", 315360000),
        ("MYSQL_LOCK_WAIT_TIMEOUT_S", 3600),
        ("SCREEN_POP_TIMEOUT_S", 86400),
    ],
)
def test_each_number_may_be_as_large_as_its_most(settings, name, most):
    assert create_app({**settings, name: f" {most} "}).config[name] == most


@pytest.mark.parametrize(
    ("value", "secure"),
    [("1", True), ("true", True), ("Yes", True), (" on ", True), ("0", False), ("false", False)],
)
def test_the_secure_cookie_switch_reads_the_usual_spellings(settings, value, secure):
    assert (
        create_app({**settings, "SESSION_COOKIE_SECURE": value}).config["SESSION_COOKIE_SECURE"]
        is secure
    )


def test_settings_from_the_environment_become_values(tmp_path):
    # Settings are read when webapp.config is imported: a fresh interpreter sees the variables.
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env.update(
        APP_ENV="development",
        DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
        IDENTIFY_MAX_ATTEMPTS="3",
        SESSION_COOKIE_SECURE="true",
        SIGN_IN_LIMIT_PER_ACCOUNT="5 per 10 minutes",
    )
    script = (
        "import json; from webapp import create_app; app = create_app(); c = app.config; "
        "print(json.dumps([c['IDENTIFY_MAX_ATTEMPTS'], c['SESSION_COOKIE_SECURE'], "
        "c['SIGN_IN_LIMIT_PER_ACCOUNT'], c['SECRET_KEY'], app.instance_path]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    attempts, secure, limit, key, instance = json.loads(done.stdout)
    assert (attempts, secure, limit) == (3, True, "5 per 10 minutes")
    # The development profile signs sessions with the box's own key, not a published one.
    assert key == (Path(instance) / "secret_key").read_text().strip()


def test_an_unknown_profile_is_named(tmp_path):
    env = {**os.environ, "APP_ENV": "staging", "DATABASE_URL": f"sqlite:///{tmp_path}/x.db"}
    done = subprocess.run(
        [sys.executable, "-c", "from webapp import create_app; create_app()"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "APP_ENV must be one of production, development, testing, not 'staging'" in done.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://identity:pw-secret@db.example/identity",
            "DATABASE_URL (postgresql://identity:***@db.example/identity) is for postgresql; "
            "this service runs on SQLite and MySQL/MariaDB only",
        ),
        ("oracle+oracledb://db.example/x", "is for oracle; this service runs on SQLite"),
        (
            "mysql+mysqldb://identity:pw-secret@db.example/identity",
            "DATABASE_URL needs the mysqldb driver, which is not installed",
        ),
        ("pw-secret not a url", "DATABASE_URL is not a database URL"),
        # Two slashes make the first folder a host: the engine refused it in every
        # worker with a traceback, naming a path under the instance folder.
        (
            "sqlite://var/lib/identity.db",
            "DATABASE_URL (sqlite://var/lib/identity.db) names a host or user, which a "
            "SQLite URL has none of; put three slashes",
        ),
        ("sqlite://identity:pw-secret@/x.db", "names a host or user"),
        # In memory, `db upgrade` built a schema that was gone when the next command ran.
        ("sqlite://", "DATABASE_URL (sqlite://) is an in-memory SQLite database"),
        ("sqlite:///:memory:", "is an in-memory SQLite database"),
        ("sqlite:///file:x?mode=memory&uri=true", "is an in-memory SQLite database"),
        ("sqlite:///file::memory:?uri=true", "is an in-memory SQLite database"),
        # MySQL's utf8 is utf8mb3: every request holding an emoji failed in the database
        # (errors 1267 and 1366) and was answered 503 "try again".
        (
            "mysql+pymysql://identity:pw-secret@db.example/identity?charset=utf8",
            "DATABASE_URL (mysql+pymysql://identity:***@db.example/identity?charset=utf8) "
            "asks for a connection in utf8; the tables are utf8mb4",
        ),
        ("mariadb+pymysql://db.example/x?charset=latin1", "asks for a connection in latin1"),
    ],
)
def test_a_database_the_service_cannot_use_is_refused_at_start(url, message):
    with pytest.raises(ValueError) as refused:
        create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})
    assert message in str(refused.value)
    assert "pw-secret" not in str(refused.value)


@pytest.mark.parametrize(
    "url", ["mysql+pymysql://db.example/x?charset=UTF8MB4", "mariadb+pymysql://db.example/x"]
)
def test_a_utf8mb4_connection_or_none_named_is_taken(url):
    assert create_app({"SQLALCHEMY_DATABASE_URI": url, "TESTING": True})


def test_the_cli_names_an_unsupported_database_instead_of_missing_commands(tmp_path):
    env = {**os.environ, "DATABASE_URL": "postgresql://identity@db.example/identity"}
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "users", "list"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert "DATABASE_URL (postgresql://identity@db.example/identity) is for postgresql" in (
        done.stderr
    )
    assert "No such command" not in done.stderr
    assert "ModuleNotFoundError" not in done.stderr


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IDENTIFY_MAX_ATTEMPTS", "0", "IDENTIFY_MAX_ATTEMPTS must be at least 1, not 0"),
        # A port that is no number was refused only when a worker made the app.
        (
            "RATELIMIT_STORAGE_URI",
            "redis://cache:63a9",
            "RATELIMIT_STORAGE_URI is not a Redis URL the client can read",
        ),
        (
            "RATELIMIT_STORAGE_URI",
            f"redis+cluster://127.0.0.1:{CLOSED_PORT}",
            CLUSTER_UNREACHABLE,
        ),
        ("DATABASE_URL", "sqlite://var/lib/identity.db", "DATABASE_URL (sqlite://var/lib/"),
        # Checked only when a worker built the app: once per worker, after "Booting worker".
        (
            "PASSWORD_HASH_PROFILE",
            "FAST",
            "PASSWORD_HASH_PROFILE 'FAST' is not one of argon2's profiles",
        ),
    ],
)
def test_gunicorn_refuses_a_bad_setting_once_before_starting_workers(
    tmp_path, name, value, message
):
    # Found in the operator review: checked only in the workers, a bad setting was printed
    # once per worker, and two workers failing at once made gunicorn exit 1 with a
    # traceback of its own. gunicorn.conf.py checks the settings in the master first.
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path}/x.db", name: value}
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--workers", "4", "--bind", "127.0.0.1:0", "wsgi:app"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 4, done.stderr
    assert done.stderr.count(f"Error: {message}") == 1
    assert "Booting worker" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["-c", "import wsgi"],  # as gunicorn loads it
        ["-m", "flask", "--app", "wsgi", "users", "list"],
    ],
)
def test_a_bad_setting_is_one_line_not_a_traceback(tmp_path, command):
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
        "IDENTIFY_MAX_ATTEMPTS": "0",
    }
    done = subprocess.run(
        [sys.executable, *command], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 4  # gunicorn's "the app failed to load": it stops, not respawns
    assert done.stderr.strip() == "Error: IDENTIFY_MAX_ATTEMPTS must be at least 1, not 0"


def test_gunicorn_leaves_its_control_socket_off(tmp_path, database_urls):
    # gunicorn 24+ opens a control socket at one path per user ($XDG_RUNTIME_DIR or
    # ~/.gunicorn): a second instance on the box (staging beside production) silently
    # took the first one's, so a control command reached the wrong server.
    home, runtime = tmp_path / "home", tmp_path / "run"
    home.mkdir()
    runtime.mkdir()
    server = LiveServer(
        database_urls["sqlite"], workers=1, env={"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)}
    )
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            made = [p for p in [*home.rglob("*"), *runtime.rglob("*")] if p.is_socket()]
            assert made == []
            time.sleep(0.1)
    finally:
        server.stop()


def test_an_instance_folder_that_cannot_be_written_is_one_line_naming_the_settings(tmp_path):
    # Found following the README on a box where the code belongs to another user: with
    # SECRET_KEY unset, the generated key could not be kept, and every worker died with
    # a traceback. The app is a copy whose instance folder is taken by a file, which
    # nobody (root included) can write into.
    copy = tmp_path / "app"
    shutil.copytree(ROOT / "webapp", copy / "webapp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "wsgi.py", copy / "wsgi.py")
    (copy / "instance").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if k != "SECRET_KEY"}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path}/x.db"
    done = subprocess.run(
        [sys.executable, "-c", "import wsgi"], env=env, cwd=copy, capture_output=True, text=True
    )
    assert done.returncode == 4, done.stderr  # gunicorn's "the app failed to load"
    assert done.stderr.strip() == (
        f"Error: SECRET_KEY is not set, and the instance folder {copy / 'instance'}, which "
        "then keeps it, cannot be written (File exists): let the service's user write "
        "there, or set SECRET_KEY"
    )
    # With the key set, nothing needs the folder: the app starts.
    env["SECRET_KEY"] = "k" * 32
    done = subprocess.run(
        [sys.executable, "-c", "import wsgi"], env=env, cwd=copy, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
