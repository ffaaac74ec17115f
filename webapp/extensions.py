"""Extension objects, created unbound so that nothing imports the app module."""

import hashlib
import hmac

import flask_limiter
from flask import current_app, request
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from htmx_flask import Htmx
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    """Declarative base whose constraints get stable names in migrations."""

    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()
htmx = Htmx()


class Limiter(flask_limiter.Limiter):
    """Flask-Limiter, with endpoints it never has to look at.

    Flask-Limiter checks every request before its view runs. Even for a
    request its own ``request_filter`` lets through, it first resolves the
    endpoint's limits and exemption scopes, about 0.03 ms of CPU. The
    checkout's identify calls, most of the traffic, carry no limit (API keys
    guard them), so the endpoints named in ``unchecked`` skip the check
    outright. Limits declared on their views would still apply: those are
    checked by the view's decorator, not here. Application-wide, default and
    meta limits, checked only here, do not apply to them (none is configured).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unchecked: set[str] = set()

    def _check_request_limit(self, callable_name=None, in_middleware=True) -> None:
        if in_middleware and request.endpoint in self.unchecked:
            return
        super()._check_request_limit(callable_name, in_middleware)


# Limits are declared per view; storage comes from RATELIMIT_STORAGE_URI.
limiter = Limiter(key_func=get_remote_address)


def limit_key_digest(text: str) -> str:
    """``text`` (an e-mail or a voucher code) as a rate-limit key holds it: HMAC-SHA256
    under the app's SECRET_KEY, in hex.

    Keyed, so that whoever can read the counters (a Redis other services share) cannot
    search the codes' 50 bits, or a list of e-mails, offline against a plain hash. Boxes
    that share the counters must share SECRET_KEY, as they must for sessions anyway.
    The message is prefixed: these digests cannot stand for anything else signed with
    the key.
    """
    secret = current_app.config["SECRET_KEY"]
    key = secret if isinstance(secret, bytes) else secret.encode()
    return hmac.new(key, b"rate-limit-key\0" + text.encode(), hashlib.sha256).hexdigest()
