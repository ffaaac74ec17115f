"""Settings read from the environment, one class per profile."""

import os


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


class Config:
    """Production defaults; every value can be set through the environment."""

    SECRET_KEY = os.environ.get("SECRET_KEY")
    # None means "a SQLite file in the instance folder", resolved in create_app.
    SQLALCHEMY_DATABASE_URI = os.environ.get("DATABASE_URL")
    SQLALCHEMY_TRACK_MODIFICATIONS = False
    API_KEYS = _csv(os.environ.get("API_KEYS"))
    # Bodies above this get 413 before any JSON is parsed.
    MAX_CONTENT_LENGTH = 64 * 1024
    # How often a transaction that lost a lock race is tried again before 503.
    IDENTIFY_MAX_ATTEMPTS = int(os.environ.get("IDENTIFY_MAX_ATTEMPTS", "12"))
    SQLITE_BUSY_TIMEOUT_MS = int(os.environ.get("SQLITE_BUSY_TIMEOUT_MS", "10000"))
    # WAL pages before a checkpoint (16000 pages of 4 KiB: a WAL file of about 64 MiB).
    SQLITE_WAL_AUTOCHECKPOINT = int(os.environ.get("SQLITE_WAL_AUTOCHECKPOINT", "16000"))
    # Reverse proxies (load balancers) in front of the app that set X-Forwarded-For
    # and X-Forwarded-Proto. 0: clients connect directly, and the headers are ignored
    # (trusting them without a proxy would let any client pick its own address).
    TRUSTED_PROXIES = int(os.environ.get("TRUSTED_PROXIES", "0"))
    RATELIMIT_STORAGE_URI = os.environ.get("RATELIMIT_STORAGE_URI", "memory://")
    RATELIMIT_HEADERS_ENABLED = True
    # Explicit, because Flask-Limiter would otherwise inherit the previous app's setting.
    RATELIMIT_ENABLED = True
    # Namespaces the counters in a Redis that other services share.
    RATELIMIT_KEY_PREFIX = os.environ.get("RATELIMIT_KEY_PREFIX", "identity")
    # While the shared storage is unreachable, count per process rather than fail (500).
    RATELIMIT_IN_MEMORY_FALLBACK_ENABLED = True
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
    # Customers per transaction in a whole-database reconciliation run.
    RECONCILE_BATCH_SIZE = int(os.environ.get("RECONCILE_BATCH_SIZE", "100"))
    # Dashboard sessions: seconds until an agent must sign in again (12 h by default).
    PERMANENT_SESSION_LIFETIME = int(os.environ.get("PERMANENT_SESSION_LIFETIME", "43200"))
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SAMESITE = "Lax"
    # 1: the cookie is HTTPS-only always; a cookie set over HTTPS is Secure anyway (CookieSessions).
    SESSION_COOKIE_SECURE = os.environ.get("SESSION_COOKIE_SECURE", "0") == "1"
    # Strict-Transport-Security max-age on answers to HTTPS requests; 0 sends none.
    HSTS_SECONDS = int(os.environ.get("HSTS_SECONDS", "31536000"))
    # argon2 parameters for agents' passwords: a name from argon2.profiles. Unset:
    # RFC_9106_LOW_MEMORY (CHEAPEST under TESTING, so the suite stays fast).
    PASSWORD_HASH_PROFILE = os.environ.get("PASSWORD_HASH_PROFILE") or None
    # CSRF tokens live as long as the session, so a dashboard tab left open keeps working.
    WTF_CSRF_TIME_LIMIT = None
    TESTING = False


class DevelopmentConfig(Config):
    """Local development: a throwaway secret key is acceptable."""

    SECRET_KEY = os.environ.get("SECRET_KEY", "dev-only-not-secret")


class TestingConfig(Config):
    """The test suite: explicit database URL, no rate-limit storage shared."""

    TESTING = True
    SECRET_KEY = "testing-only"
    WTF_CSRF_ENABLED = True


PROFILES = {
    "production": Config,
    "development": DevelopmentConfig,
    "testing": TestingConfig,
}
