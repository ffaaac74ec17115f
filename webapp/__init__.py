"""The customer identity service: application factory."""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

import click
from flask import Flask, has_request_context, request
from flask.sessions import SecureCookieSessionInterface
from htmx_flask.requests import HtmxAwareRequest
from itsdangerous import BadSignature
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import (
    HTTPException,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnprocessableEntity,
)
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter
from werkzeug.utils import cached_property
from werkzeug.wsgi import LimitedStream

from .config import SettingsError, check_settings, profile
from .database import configure_engine, describe, engine_options, refuses_a_value
from .extensions import db, limiter, migrate
from .models import MAX_ROW_ID
from .request_ids import init_request_ids

ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


def _secret_key(app: Flask) -> str:
    """SECRET_KEY from the settings, else one generated once and kept in the instance folder."""
    path = Path(app.instance_path) / "secret_key"
    if not path.exists():
        # Written aside then linked into place, so that gunicorn workers starting
        # together all read the one key that won.
        draft = path.with_name(f".secret_key.{os.getpid()}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    return path.read_text().strip()


def _use_instance_folder(app: Flask) -> None:
    """Keep in the instance folder what the settings leave to it: a generated SECRET_KEY,
    and the SQLite file when DATABASE_URL is unset.

    A folder the service's user cannot write (code installed by another user, say)
    was a traceback in every worker; it is a SettingsError naming what to set.
    """
    unset = [
        name
        for name, key in (("SECRET_KEY", "SECRET_KEY"), ("DATABASE_URL", "SQLALCHEMY_DATABASE_URI"))
        if not app.config.get(key)
    ]
    if not unset:
        return
    try:
        os.makedirs(app.instance_path, exist_ok=True)
        if not app.config.get("SECRET_KEY"):
            app.config["SECRET_KEY"] = _secret_key(app)
    except OSError as exc:
        raise SettingsError(
            f"{' and '.join(unset)} {'is' if len(unset) == 1 else 'are'} not set, and the "
            f"instance folder {app.instance_path}, which then keeps "
            f"{'them' if len(unset) > 1 else 'it'}, cannot be written ({exc.strerror}): "
            f"let the service's user write there, or set {' and '.join(unset)}"
        ) from None


class RowIdConverter(IntegerConverter):
    """``<int:...>`` in every route: an id no database integer holds is a 404, not an overflow."""

    def __init__(self, map, *args, **kwargs):
        kwargs.setdefault("max", MAX_ROW_ID)
        super().__init__(map, *args, **kwargs)


# How far ahead of this box's clock another box's may run and its session cookies still be
# taken (seconds). Boxes behind a load balancer sign each answer's cookie with their own clock.
MAX_CLOCK_SKEW_S = 300


class CookieSessions(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with no signing set-up for requests that send no cookie,
    and room for the clocks of several boxes.

    The checkout's API calls never carry one; the stock interface builds its
    signer on every request before looking.

    Every answer signs the cookie afresh, with the time of the box that sent it. The
    stock interface refused a cookie signed later than its own clock says it is now,
    so behind a load balancer, a request that reached a box whose clock ran a few
    seconds behind the last one's found no session: the agent was sent to sign in
    (an htmx request, a screen-pop poll, got 401), and the sign-in page's new cookie
    replaced the real one. A cookie signed up to ``MAX_CLOCK_SKEW_S`` ahead is taken;
    one older than the session lifetime is refused, as before.
    """

    def open_session(self, app, request):
        cookie = request.cookies.get(self.get_cookie_name(app))
        if not cookie:
            return self.session_class()
        serializer = self.get_signing_serializer(app)
        if serializer is None:
            return None
        try:
            data, signed_at = serializer.loads(cookie, return_timestamp=True)
        except BadSignature:
            return self.session_class()
        age = time.time() - signed_at.timestamp()
        if not -MAX_CLOCK_SKEW_S <= age <= app.permanent_session_lifetime.total_seconds():
            return self.session_class()
        return self.session_class(data)

    def get_cookie_secure(self, app) -> bool:
        # A session that came over https (directly, or through TRUSTED_PROXIES that
        # say so) never travels over plain http afterwards, whatever the setting.
        return super().get_cookie_secure(app) or (has_request_context() and request.is_secure)


class _StreamedBody(LimitedStream):
    """A body sent without a length (chunked), read one byte past ``most``: that byte is a 413.

    Werkzeug's own limit on such a body stops reading at the limit and hands back what it
    read, so a longer body arrived cut short; when the cut was valid JSON (an object
    followed by padding), the cut request was carried out.
    """

    def __init__(self, stream, most: int):
        super().__init__(stream, most + 1, is_max=True)
        self.most = most

    def readinto(self, buffer) -> int | None:
        read = super().readinto(buffer)
        if self.tell() > self.most:
            raise RequestEntityTooLarge()
        return read


class BodyLimitedRequest(HtmxAwareRequest):
    """The request (htmx-flask's, with ``request.htmx``) whose MAX_CONTENT_LENGTH, or a
    view's own limit, refuses a longer chunked body with 413, as a longer Content-Length."""

    @cached_property
    def stream(self):
        most = self.max_content_length
        if (
            most is not None
            and self.content_length is None
            and self.environ.get("wsgi.input_terminated")
            and not self.shallow
        ):
            return _StreamedBody(self.environ["wsgi.input"], most)
        return super().stream


def _database_url(app: Flask) -> str:
    url = app.config.get("SQLALCHEMY_DATABASE_URI")
    if not url:
        url = f"sqlite:///{Path(app.instance_path) / 'identity.db'}"
    if url.startswith("mysql") and "charset=" not in url:
        url += ("&" if "?" in url else "?") + "charset=utf8mb4"
    return url


def _serving() -> bool:
    """Whether the app is built to answer requests, not for a ``flask`` command such as
    ``users list`` (which would print the start-up warnings every time)."""
    command = click.get_current_context(silent=True)
    return command is None or command.info_name == "run"


def create_app(config: dict | None = None) -> Flask:
    """Build the app; ``config`` overrides settings (the tests pass their database URL)."""
    app = Flask(
        __name__,
        instance_relative_config=True,
        template_folder=str(ROOT / "templates"),
        static_folder=str(ROOT / "static"),
    )
    app.url_map.converters["int"] = RowIdConverter
    app.session_interface = CookieSessions()
    app.config.from_object(profile())
    # Answers keep the documented key order (primaryContactId first).
    app.json.sort_keys = False
    if config:
        app.config.update(config)
    check_settings(app.config)
    _use_instance_folder(app)
    if app.config["TRUSTED_PROXIES"] > 0:
        # The client's address and scheme as the proxies saw them: rate limits
        # count per real client, and secure cookies and redirects use https.
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)
    url = _database_url(app)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    # Requests give up on a database that stops answering; commands wait for it.
    lock_wait_s = app.config["MYSQL_LOCK_WAIT_TIMEOUT_S"] if _serving() else None
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(url, lock_wait_s))

    init_request_ids(app)
    db.init_app(app)
    migrate.init_app(app, db, directory=str(ROOT / "migrations"))
    with app.app_context():
        configure_engine(db.engine, app.config)
    # check_settings made the limiter's storage once already: the URL is one it takes.
    limiter.init_app(app)

    from . import models  # noqa: F401  (registers the tables with the metadata)
    from .api import bp as api_bp
    from .api import http_error_json, load_openapi, wants_json_errors
    from .cli import register_cli
    from .dashboard import init_dashboard
    from .dashboard.rendering import http_error_page
    from .engagements import init_engagements
    from .reconcile import init_reconcile
    from .vouchers import init_vouchers

    app.extensions["openapi"] = load_openapi()
    app.register_blueprint(api_bp)
    init_dashboard(app)
    # After htmx.init_app (in init_dashboard), which installs the class this one extends.
    app.request_class = BodyLimitedRequest
    init_engagements(app)
    init_reconcile(app)
    init_vouchers(app)
    register_cli(app)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        if wants_json_errors(request.path):
            return http_error_json(exc)
        # A missing stylesheet or image needs no page around it; an error that
        # brings its own response keeps it.
        if request.endpoint == "static" or exc.response is not None:
            return exc
        try:
            return http_error_page(exc)
        except SQLAlchemyError as failure:
            # The page needs the session's agent; with the database down, the plain
            # error is still an answer. One line: every open dashboard's screen-pop
            # poll lands here each second the database is away.
            db.session.rollback()
            log.warning(
                "the error page for %s needs the database, which failed too (%s); "
                "answering plainly",
                exc.code,
                describe(failure),
            )
            return exc
        except Exception:
            log.exception("the error page for %s failed; answering plainly", exc.code)
            return exc

    @app.errorhandler(SQLAlchemyError)
    def _database_error(exc: SQLAlchemyError):
        # The JSON API's blueprints answer this themselves; here are the dashboard's pages,
        # its fragments and the screen-pop polls, which said a bare 500.
        db.session.rollback()
        if refuses_a_value(exc):
            # Not an outage: "try again in a moment" would fail the same way.
            log.error(
                "the database refused a value on %s %s: %s",
                request.method,
                request.path,
                describe(exc),
            )
            return _http_error(
                UnprocessableEntity(
                    "A value you entered cannot be stored (too long, or characters the "
                    "database does not take). Nothing was changed: shorten or correct it."
                )
            )
        log.error("database error on %s %s: %s", request.method, request.path, describe(exc))
        return _http_error(
            ServiceUnavailable("The database did not answer. Try again in a moment.", retry_after=1)
        )

    if not app.config["API_KEYS"] and _serving():
        from .api import OPEN_WITHOUT_KEYS

        app.logger.warning(
            "API_KEYS is not set: %s are open to anyone who can reach them, "
            "and the voucher API and the customer lookup answer 401 until it is",
            OPEN_WITHOUT_KEYS,
        )
    return app
