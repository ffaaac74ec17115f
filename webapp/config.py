"""Settings read from the environment, one class per profile, checked at start.

Numbers, switches and rate limits arrive as text; ``check_settings`` turns
them into values or stops the app with a message naming the variable, so that
a typo never runs as a silent default (a limit that does not parse would
otherwise switch that limit off).
"""

import os
from datetime import timedelta
from urllib.parse import urlsplit

from argon2 import Parameters, profiles
from limits import parse_many
from limits.errors import ConfigurationError
from limits.storage import SCHEMES, MemoryStorage, RedisStorage
from redis.exceptions import RedisClusterException
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class SettingsError(ValueError):
    """A setting that does not parse or is out of range; the message names it."""


class Config:
    """Production defaults; every value can be set through the environment."""

    SECRET_KEY = os.environ.get("SECRET_KEY")
    # None means "a SQLite file in the instance folder", resolved in create_app.
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL")
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    # Comma-separated; turned into a list (and checked) by check_settings.
    API_KEYS = os.environ.get("API_KEYS", "")
    # Bodies above this get 413 before any JSON is parsed.
    MAX_CONTENT_LENGTH = 64 * 1024
    # How often a transaction that lost a lock race is tried again before 503.
    IDENTIFY_MAX_ATTEMPTS = os.environ.get("IDENTIFY_MAX_ATTEMPTS", "12")
    SQLITE_BUSY_TIMEOUT_MS = os.environ.get("SQLITE_BUSY_TIMEOUT_MS", "10000")
    # MySQL/MariaDB's innodb_lock_wait_timeout for the app's connections (the server's
    # default, 50 s, outlasts gunicorn's 30 s worker timeout: a killed worker answers 500).
    MYSQL_LOCK_WAIT_TIMEOUT_S = os.environ.get("MYSQL_LOCK_WAIT_TIMEOUT_S", "10")
    # WAL pages before a checkpoint (16000 pages of 4 KiB: a WAL file of about 64 MiB).
    SQLITE_WAL_AUTOCHECKPOINT = os.environ.get("SQLITE_WAL_AUTOCHECKPOINT", "16000")
    # Reverse proxies (load balancers) in front of the app that set X-Forwarded-For
    # and X-Forwarded-Proto. 0: clients connect directly, and the headers are ignored
    # (trusting them without a proxy would let any client pick its own address).
    TRUSTED_PROXIES = os.environ.get("TRUSTED_PROXIES", "0")
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
    RATELIMIT_HEADERS_ENABLED = True
    # Flask-Limiter would put its window's reset in Retry-After on every answer of a
    # limited route (a 200 said "retry after 60", a 503 lost its "1"). Retry-After
    # stays the answers' own: the 429 handlers set it, and 503s say 1.
    RATELIMIT_HEADER_RETRY_AFTER = "X-RateLimit-Retry-After"
    # Explicit, because Flask-Limiter would otherwise inherit the previous app's setting.
    RATELIMIT_ENABLED = True
    # Namespaces the counters in a Redis that other services share.
    RATELIMIT_KEY_PREFIX = os.environ.get("RATELIMIT_KEY_PREFIX", "identity")
    # While the shared storage is unreachable, count per process rather than fail (500).
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
    # A Redis that takes the connection and never answers (hung, or a network dropping
    # its packets) held every rate-limited request until gunicorn killed the worker:
    # the client waits forever by default. With these it gives up within a second, and
    # the fallback above counts. Ignored by memory://.
    RATELIMIT_STORAGE_OPTIONS = {"socket_connect_timeout": 1, "socket_timeout": 1}
    # POST /vouchers/validate: per client address, and per voucher code across all clients.
    VOUCHER_VALIDATE_LIMIT_PER_CLIENT = os.environ.get(
        "VOUCHER_VALIDATE_LIMIT_PER_CLIENT", "30 per minute;300 per hour"
    )
    VOUCHER_VALIDATE_LIMIT_PER_CODE = os.environ.get(
        "VOUCHER_VALIDATE_LIMIT_PER_CODE", "10 per minute"
    )
    # POST /sign-in: refused attempts per account (the e-mail typed) and per client address.
    # An agent who mistypes a few times never gets near them; guessing does, fast.
    SIGN_IN_LIMIT_PER_ACCOUNT = os.environ.get("SIGN_IN_LIMIT_PER_ACCOUNT", "10 per 15 minutes")
    SIGN_IN_LIMIT_PER_ADDRESS = os.environ.get("SIGN_IN_LIMIT_PER_ADDRESS", "30 per 15 minutes")
    # Seconds after it rang that a call's pop leaves agents' screens when the phone system
    # never said the call ended (a pop an agent is in, clicked or answered stays); 0: never.
    SCREEN_POP_TIMEOUT_S = os.environ.get("SCREEN_POP_TIMEOUT_S", "300")
    # Customers per transaction in a whole-database reconciliation run.
    RECONCILE_BATCH_SIZE = os.environ.get("RECONCILE_BATCH_SIZE", "100")
    # Dashboard sessions: seconds until an agent must sign in again (12 h by default).
    PERMANENT_SESSION_LIFETIME = os.environ.get("PERMANENT_SESSION_LIFETIME", "43200")
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    # 1: the cookie is HTTPS-only always; a cookie set over HTTPS is Secure anyway (CookieSessions).
    SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "0")
    # Strict-Transport-Security max-age on answers to HTTPS requests; 0 sends none.
    HSTS_SECONDS = os.environ.get("HSTS_SECONDS", "31536000")
    # argon2 parameters for agents' passwords: a name from argon2.profiles. Unset:
    # RFC_9106_LOW_MEMORY (CHEAPEST under TESTING, so the suite stays fast).
    PASSWORD_HASH_PROFILE = os.environ.get("PASSWORD_HASH_PROFILE") or None
    # CSRF tokens live as long as the session, so a dashboard tab left open keeps working.
    WTF_CSRF_TIME_LIMIT = None
    TESTING = False


class TestingConfig(Config):
    """Test runs: Flask's testing mode, and the cheapest password hashing. Never on a server."""

    TESTING = True
    WTF_CSRF_ENABLED = True


# "development" is kept for boxes that set it: it is the production profile
# (it once meant a fixed, public SECRET_KEY, which forged sessions could use).
PROFILES = {
    "production": Config,
    "development": Config,
    "testing": TestingConfig,
}


def profile() -> type[Config]:
    """The settings class APP_ENV names (production when unset); a clear error for any other."""
    name = os.environ.get("APP_ENV", "production")
    try:
        return PROFILES[name]
    except KeyError:
        raise SettingsError(f"APP_ENV must be one of {', '.join(PROFILES)}, not {name!r}") from None


# Whole-number settings: the least and the most each may be. Past the most a
# setting breaks something or makes no sense.
_TEN_YEARS = 10 * 365 * 24 * 60 * 60
_SQLITE_INT = 2**31 - 1
_WHOLE_NUMBERS = {
    # Retries back off up to 4 ms more each time: 100 already waits about 10 s.
    "IDENTIFY_MAX_ATTEMPTS": (1, 100),
    # SQLite keeps both as a C int, and a larger value silently becomes 0 there:
    # no waiting for the write lock; no checkpoints, so a WAL that grows without end
    # (which is also why the checkpoint needs at least 1).
    "SQLITE_BUSY_TIMEOUT_MS": (0, _SQLITE_INT),
    "SQLITE_WAL_AUTOCHECKPOINT": (1, _SQLITE_INT),
    # Anything near the most already outlasts gunicorn's worker timeout (see the README).
    "MYSQL_LOCK_WAIT_TIMEOUT_S": (1, 3600),
    "TRUSTED_PROXIES": (0, 100),
    # A batch is one write transaction, which checkout waits for.
    "RECONCILE_BATCH_SIZE": (1, 10000),
    # Each answer's cookie expires now + this, which must stay a date.
    "PERMANENT_SESSION_LIFETIME": (1, _TEN_YEARS),
    "HSTS_SECONDS": (0, _TEN_YEARS),
    # A day: a pop no one touched for longer is no use to anyone.
    "SCREEN_POP_TIMEOUT_S": (0, 86400),
}
_SWITCHES = {"1": True, "true": True, "yes": True, "on": True}
_SWITCHES.update({"0": False, "false": False, "no": False, "off": False, "": False})
_RATE_LIMITS = (
    "VOUCHER_VALIDATE_LIMIT_PER_CLIENT",
    "VOUCHER_VALIDATE_LIMIT_PER_CODE",
    "SIGN_IN_LIMIT_PER_ACCOUNT",
    "SIGN_IN_LIMIT_PER_ADDRESS",
)


def _whole_number(name: str, value, least: int, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise SettingsError(f"{name} must be a whole number, not {value!r}")
    text = str(value).strip()
    digits = text.removeprefix("-")
    if not (text.isascii() and digits.isdigit()):
        raise SettingsError(f"{name} must be a whole number, not {value!r}")
    if len(digits) >= 19:
        # Out of every range here, whatever it says; int() of a long string is slow.
        bound = f"at least {least}" if text.startswith("-") else f"at most {most}"
        raise SettingsError(f"{name} must be {bound}, not {text}")
    number = int(text)
    if number < least:
        raise SettingsError(f"{name} must be at least {least}, not {number}")
    if number > most:
        raise SettingsError(f"{name} must be at most {most}, not {number}")
    return number


# The databases the service is built and tested for (backend names in DATABASE_URL).
_DATABASES = ("sqlite", "mysql", "mariadb")


def _check_database_url(value: str) -> None:
    """SettingsError unless DATABASE_URL names SQLite or MySQL/MariaDB with a driver installed."""
    try:
        url = make_url(value)
    except ArgumentError:
        # Not echoed: the text may hold a password.
        raise SettingsError("DATABASE_URL is not a database URL such as sqlite:///path") from None
    shown = url.render_as_string(hide_password=True)
    if url.get_backend_name() not in _DATABASES:
        raise SettingsError(
            f"DATABASE_URL ({shown}) is for {url.get_backend_name()}; this service runs on "
            "SQLite and MySQL/MariaDB only (mysql+pymysql://user:pass@host/db)"
        )
    # sqlite://var/lib/identity.db reads "var" as a host, which SQLite has none of: the
    # engine refused it in every worker, with a traceback that named another path.
    if url.get_backend_name() == "sqlite" and (
        url.host or url.port or url.username or url.password
    ):
        raise SettingsError(
            f"DATABASE_URL ({shown}) names a host or user, which a SQLite URL has none of; "
            "put three slashes before a path relative to the instance folder "
            "(sqlite:///identity.db) and four before an absolute one "
            "(sqlite:////var/lib/identity/identity.db)"
        )
    # Each process (each worker, each command) would get its own empty database: `db
    # upgrade` built a schema that vanished with it, and the next command asked for it again.
    if url.get_backend_name() == "sqlite" and (
        url.database in (None, "")
        or ":memory:" in url.database
        or url.query.get("mode") == "memory"
    ):
        raise SettingsError(
            f"DATABASE_URL ({shown}) is an in-memory SQLite database, empty in every process "
            "and lost when it ends; name a file: sqlite:////var/lib/identity/identity.db"
        )
    # The tables hold utf8mb4. A connection in another character set (charset=utf8 is
    # MySQL's three-byte utf8mb3) cannot carry a four-byte character, such as an emoji in
    # an event's name: every request holding one failed in the database, and was answered
    # 503 "the database did not answer; try again", which no retry could change.
    charsets = url.query.get("charset")
    charsets = (charsets,) if isinstance(charsets, str) else charsets or ()
    if url.get_backend_name() != "sqlite" and any(c.lower() != "utf8mb4" for c in charsets):
        raise SettingsError(
            f"DATABASE_URL ({shown}) asks for a connection in {', '.join(charsets)}; the "
            "tables are utf8mb4, which a name or message with an emoji needs: set "
            "charset=utf8mb4, or leave charset out (utf8mb4 is then used)"
        )
    try:
        url.get_dialect().import_dbapi()
    except ImportError:
        raise SettingsError(
            f"DATABASE_URL needs the {url.get_driver_name()} driver, which is not installed "
            f"({shown}); mysql+pymysql:// uses the one requirements.txt installs"
        ) from None


# Not echoed: the URL may hold a password.
UNREADABLE_REDIS_URL = (
    "RATELIMIT_STORAGE_URI is not a Redis URL the client can read: "
    "redis://[:password@]host[:port][/database]"
)


def _check_rate_limit_storage(value, options) -> None:
    """SettingsError unless RATELIMIT_STORAGE_URI is memory:// or a Redis (Valkey) URL.

    Those are the storages requirements.txt installs a client for; anything else
    failed in every worker with a traceback (gunicorn's "worker failed to boot").
    """
    text = value if isinstance(value, str) else ""
    try:
        # As written: the storage lower-cases it, and the Redis client then refuses REDIS://.
        scheme = text.partition(":")[0] if urlsplit(text).scheme else ""
    except ValueError:  # an IPv6 address's bracket left open: redis://[::1:6379
        raise SettingsError(UNREADABLE_REDIS_URL) from None
    storage = SCHEMES.get(scheme, object)
    if not issubclass(storage, MemoryStorage | RedisStorage):
        # Only the scheme is echoed: a Redis URL may hold a password.
        shown = f"{scheme}://..." if scheme else "a value with no scheme" if text else repr(value)
        raise SettingsError(
            "RATELIMIT_STORAGE_URI must be memory:// or a Redis URL such as "
            f"redis://host:6379, not {shown}"
        )
    # The client reads the URL's parts (a port that is no number, say) when the storage
    # is made. Checked here, gunicorn's master refuses the URL once, before any worker
    # starts. Making it connects to nothing, but for a cluster: its client asks the nodes
    # for the cluster's layout, so a cluster that cannot be reached stops the start too.
    if issubclass(storage, RedisStorage):
        try:
            storage(text, **(options or {}))
        except (ValueError, ConfigurationError):
            raise SettingsError(UNREADABLE_REDIS_URL) from None
        except RedisClusterException:
            raise SettingsError(
                "RATELIMIT_STORAGE_URI names a Redis cluster whose nodes cannot be reached, "
                "or servers that are not a cluster (redis:// is for one server)"
            ) from None


def _api_keys(text: str) -> list[str]:
    """The keys of API_KEYS; SettingsError for a value that was set but holds no usable key.

    Unset or empty leaves the checkout's endpoints open (with a warning at start).
    A value such as "," (two keys from variables that were empty) did the same
    silently. A key with a space is a list written with spaces ("k1 k2" was one
    key), and a non-ASCII one never matched a request (headers arrive as
    Latin-1). A key shorter than MIN_API_KEY_LENGTH is refused too. The keys
    themselves are never echoed.
    """
    keys = _csv(text)
    if text and not keys:
        raise SettingsError(
            f"API_KEYS is set ({text!r}) but holds no key; give keys separated by commas, "
            "or unset it to leave the checkout's endpoints open"
        )
    for number, key in enumerate(keys, 1):
        if not (key.isascii() and key.isprintable()) or " " in key:
            raise SettingsError(
                f"API_KEYS key {number} of {len(keys)} holds a space or a character that is "
                "not printable ASCII; separate keys with commas, each printable ASCII "
                "without spaces"
            )
        # A short key is found by trying: the checkout's endpoints take requests at speed.
        if len(key) < MIN_API_KEY_LENGTH:
            raise SettingsError(
                f"API_KEYS key {number} of {len(keys)} is {len(key)} characters; each must "
                f"be at least {MIN_API_KEY_LENGTH}, for example: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
    return keys


MIN_API_KEY_LENGTH = 16


MIN_SECRET_KEY_LENGTH = 32


def check_environment() -> None:
    """Check the settings the app would read from the environment; SettingsError if one is bad.

    gunicorn's master calls this before starting workers (gunicorn.conf.py).
    """
    settings = profile()
    check_settings({name: getattr(settings, name) for name in dir(settings) if name.isupper()})


def check_settings(config: dict) -> None:
    """Turn the settings that arrive as text into values; SettingsError naming a bad one."""
    if config.get("SQLALCHEMY_DATABASE_URI"):
        _check_database_url(config["SQLALCHEMY_DATABASE_URI"])
    if isinstance(config.get("API_KEYS"), str):
        config["API_KEYS"] = _api_keys(config["API_KEYS"])
    key = config.get("SECRET_KEY")
    # It signs sessions and CSRF tokens: a short one can be guessed offline from one cookie.
    if key and len(key) < MIN_SECRET_KEY_LENGTH:
        raise SettingsError(
            f"SECRET_KEY must be at least {MIN_SECRET_KEY_LENGTH} characters, not "
            f"{len(key)}; for example: python -c 'import secrets; print(secrets.token_hex(32))'"
        )
    for name, (least, most) in _WHOLE_NUMBERS.items():
        value = config.get(name)
        if name == "PERMANENT_SESSION_LIFETIME" and isinstance(value, timedelta):
            continue
        config[name] = _whole_number(name, value, least, most)
    secure = config.get("SESSION_COOKIE_SECURE")
    if not isinstance(secure, bool):
        try:
            config["SESSION_COOKIE_SECURE"] = _SWITCHES[str(secure).strip().lower()]
        except KeyError:
            raise SettingsError(
                f"SESSION_COOKIE_SECURE must be 1 or 0 (or true/false, yes/no, on/off), "
                f"not {secure!r}"
            ) from None
    # Unset, the auth area picks the default; a name given must be one of argon2's. Checked
    # here, gunicorn's master refuses it once; in the workers it printed once per worker.
    hash_profile = config.get("PASSWORD_HASH_PROFILE")
    if hash_profile and not isinstance(getattr(profiles, str(hash_profile), None), Parameters):
        known = ", ".join(n for n in dir(profiles) if isinstance(getattr(profiles, n), Parameters))
        raise SettingsError(
            f"PASSWORD_HASH_PROFILE {hash_profile!r} is not one of argon2's profiles: {known}"
        )
    _check_rate_limit_storage(
        config.get("RATELIMIT_STORAGE_URI"), config.get("RATELIMIT_STORAGE_OPTIONS")
    )
    for name in _RATE_LIMITS:
        value = config.get(name)
        try:
            if not isinstance(value, str) or not (limits := parse_many(value)):
                raise ValueError
        except ValueError:
            raise SettingsError(
                f"{name} must be a rate limit such as '10 per minute' "
                f"(several joined by ';'), not {value!r}"
            ) from None
        # "0 per minute" parses, and would refuse every request it limits (every sign-in).
        if any(limit.amount < 1 for limit in limits):
            raise SettingsError(
                f"{name} must allow at least 1 request in each window, not {value!r}"
            )
