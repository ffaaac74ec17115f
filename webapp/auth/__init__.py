"""Signing agents in and out of the dashboard (Flask-Login sessions, argon2 passwords)."""

from __future__ import annotations

import logging
import math
import time
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_limiter import RateLimitExceeded
from flask_login import UserMixin, current_user, login_user, logout_user
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Length

from ..extensions import limiter, login_manager
from ..forms import Form
from .limits import (
    account_key,
    account_limit,
    address_limit,
    give_back_unless_refused,
    note_counted_windows,
    retry_after_seconds,
)
from .service import authenticate, end_sessions, load_agent

log = logging.getLogger(__name__)

bp = Blueprint("auth", __name__)


def private(response: Response) -> Response:
    """``after_request`` hook: never cached (customer data, session-bound tokens)."""
    response.headers.setdefault("Cache-Control", "no-store")
    return response


# The sign-in page carries a CSRF token bound to the session, and its answer sets the cookie.
bp.after_request(private)
# The sign-in limits count every attempt as they check it; only a refused one keeps its count.
bp.after_request(give_back_unless_refused)


class Agent(UserMixin):
    """The signed-in agent as Flask-Login sees it: an id and an e-mail, nothing to query.

    The session keeps "<id>.<session epoch>": signing out raises the agent's
    epoch, so a session begun before no longer loads anyone.
    """

    def __init__(self, user_id: int, email: str, session_epoch: int):
        self.id = user_id
        self.email = email
        self.session_epoch = session_epoch

    def get_id(self) -> str:
        return f"{self.id}.{self.session_epoch}"


class SignInForm(Form):
    """E-mail and password."""

    email = EmailField("E-mail", validators=[DataRequired(), Length(max=320)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def safe_next(target: str | None) -> str | None:
    """``target`` when it is a path on this site, else None (no open redirects).

    Control characters are refused outright: ``urlsplit`` drops tabs and line
    breaks before parsing (so ``/\t/host`` would read as ``//host``), and a
    line break cannot go into a ``Location`` header at all.
    """
    if not target or not target.startswith("/") or target.startswith("//"):
        return None
    if "\\" in target or any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F for ch in target):
        return None
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.scheme or parts.netloc:
        return None
    return target


# The session key holding when the agent signed in (seconds since the epoch).
SIGNED_IN_AT = "signed_in_at"


def _session_expired() -> bool:
    """A session lasts PERMANENT_SESSION_LIFETIME from sign-in, however busy it is.

    (The cookie's own expiry slides with every request, and an open dashboard
    polls for screen-pops every second.)
    """
    started = session.get(SIGNED_IN_AT)
    lifetime = current_app.permanent_session_lifetime.total_seconds()
    return not isinstance(started, int) or time.time() - started > lifetime


@login_manager.user_loader
def _load_user(session_id: str) -> Agent | None:
    user_id, _, epoch = session_id.partition(".")
    if not (user_id.isdigit() and epoch.isdigit()) or _session_expired():
        return _ended()
    user = load_agent(int(user_id))
    if user is None or user.session_epoch != int(epoch):
        return _ended()
    return Agent(user.id, user.email, user.session_epoch)


def _ended() -> None:
    """Forget a session that has ended, so that its cookie is deleted once.

    Kept, it would be sent back refreshed on every request (the cookie's
    expiry slides), and an answer still in flight when the agent signs in
    again in another tab would overwrite the new session's cookie with it.
    """
    session.clear()


def _local_page(url: str | None) -> str | None:
    """The path and query of ``url``, when it is a page of this site."""
    try:
        page = urlsplit(url or "")
    except ValueError:  # "http://[::1" and the like
        return None
    if page.netloc != request.host:
        return None
    return page.path + (f"?{page.query}" if page.query else "")


def _page_to_come_back_to() -> str | None:
    """The page signing in leads back to: the one asked for, or the one the agent was on.

    A fragment or a form htmx asked for (the next rows, a panel, a form swapped in
    place) comes from the page the agent was on, which htmx names (HX-Current-URL):
    sent back to the fragment's own URL, the agent landed on part of a page. Otherwise
    a GET asks for a page (as do htmx's boosted links and history restores), and a
    browser sending a form names the page it was on as the Referer.
    """
    htmx = request.htmx
    if htmx and htmx.current_url and not (htmx.boosted or htmx.history_restore_request):
        return _local_page(htmx.current_url)
    if request.method == "GET":
        return request.full_path.rstrip("?")
    return _local_page(request.referrer)


# The longest request line gunicorn takes (its limit_request_line, left at the default):
# method, path with query, and protocol, without the line end. docs/identity.md.
REQUEST_LINE_LIMIT = 4094


def fits_a_request_line(target: str, method: str = "POST") -> bool:
    """Whether ``method target HTTP/1.1`` stays within gunicorn's request line limit."""
    return len(f"{method} {target} HTTP/1.1".encode()) <= REQUEST_LINE_LIMIT


def sign_in_url(here: str | None) -> str:
    """The sign-in page's URL, with ``next=here`` when the whole URL can be asked for.

    ``here`` is percent-encoded again inside ``next`` (a ``%`` becomes ``%25``), so a
    long page URL, which gunicorn took, can make a sign-in URL that it refuses with its
    414 page instead of the form: a search for 320 emoji is 3,857 bytes asked for and
    6,420 bytes once in ``next``. The form is posted back to the same URL, with the
    longer method, so that request line must fit too. When it would not, ``next`` keeps
    the path alone (the search page without its search, say); when even that would not,
    there is no ``next`` and signing in goes home.
    """
    local = safe_next(here)
    candidates = [local, local.partition("?")[0]] if local else []
    for candidate in candidates:
        target = url_for("auth.sign_in", next=candidate)
        if fits_a_request_line(target):
            return target
    return url_for("auth.sign_in")


@login_manager.unauthorized_handler
def _unauthorized():
    # Back to the page asked for (or the form was on) after signing in; htmx follows
    # HX-Redirect, not a 302.
    target = sign_in_url(_page_to_come_back_to())
    if request.htmx:
        response = make_response("", 401)
        response.headers["HX-Redirect"] = target
        return response
    return redirect(target)


@bp.route("/sign-in", methods=["GET", "POST"])
@limiter.limit(address_limit, methods=["POST"])
@limiter.limit(account_limit, key_func=account_key, methods=["POST"])
def sign_in():
    """The sign-in page; a wrong e-mail or password is said in place (422)."""
    note_counted_windows()
    destination = safe_next(request.args.get("next")) or url_for("dashboard.home")
    if current_user.is_authenticated:
        return redirect(destination)
    form = SignInForm()
    status = 200
    if form.validate_on_submit():
        user = authenticate(form.email.data, form.password.data)
        if user is not None:
            # A fresh session for the signed-in agent (no fixation); the CSRF token
            # cached for this request belonged to the old one.
            session.clear()
            g.pop("csrf_token", None)
            session.permanent = True
            session[SIGNED_IN_AT] = int(time.time())
            login_user(Agent(user.id, user.email, user.session_epoch))
            return redirect(destination)
        form.form_errors.append("Wrong e-mail or password, or the account is disabled.")
    if form.is_submitted():
        status = 422
    return render_template("auth/sign_in.html", form=form), status


@bp.errorhandler(RateLimitExceeded)
def _too_many_attempts(exc: RateLimitExceeded):
    """The sign-in page again, 429, saying when to try again; the password was not checked."""
    note_counted_windows()
    wait = retry_after_seconds()
    minutes = math.ceil(wait / 60)
    log.warning("sign-in refused from %s: too many attempts (%s)", request.remote_addr, exc)
    form = SignInForm()
    form.form_errors.append(
        f"Too many sign-in attempts; try again in {minutes} minute{'' if minutes == 1 else 's'}."
    )
    response = make_response(render_template("auth/sign_in.html", form=form), 429)
    response.headers["Retry-After"] = str(wait)
    return response


@bp.post("/sign-out")
def sign_out():
    """End the agent's sessions and go back to the sign-in page (CSRFProtect checked the token).

    Every session of the agent ends, here and in other browsers, and so does
    any copy of this session's cookie.
    """
    if current_user.is_authenticated:
        end_sessions(current_user.id)
    logout_user()
    session.clear()
    g.pop("csrf_token", None)
    return redirect(url_for("auth.sign_in"))


def init_auth(app: Flask) -> None:
    """Install the login manager and the sign-in pages."""
    # Test runs hash with argon2's cheapest parameters; every other run with RFC 9106's.
    if not app.config.get("PASSWORD_HASH_PROFILE"):
        app.config["PASSWORD_HASH_PROFILE"] = "CHEAPEST" if app.testing else "RFC_9106_LOW_MEMORY"
    # A name set is checked by check_settings (in gunicorn's master too).
    login_manager.init_app(app)
    # The screen-pop's "Sign in again" link keeps within it, as sign_in_url does.
    app.jinja_env.globals["REQUEST_LINE_LIMIT"] = REQUEST_LINE_LIMIT
    # No view asks for a "fresh" sign-in, and Flask-Login's basic protection does no more
    # than mark sessions not fresh: it only rewrote the cookie of a session with no agent
    # in it (the sign-in page's), which a screen-pop poll in flight could then overwrite.
    login_manager.session_protection = None
    login_manager.login_view = "auth.sign_in"
    login_manager.login_message = "Sign in to continue."
    login_manager.login_message_category = "info"
    app.register_blueprint(bp)
