"""The support dashboard (HTML only): search, customer pages and the audit log.

``init_dashboard(app)`` installs what every HTML page relies on: sign-in,
CSRF protection, htmx request details and the security headers.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, current_app, request
from flask_login import current_user, login_required
from flask_wtf.csrf import CSRFError

from ..audit import state_lines
from ..auth import init_auth, private
from ..database import Contention
from ..extensions import csrf, htmx, login_manager
from ..identity import search_index  # noqa: F401  (registers the search index table)
from ..text import counted
from .rendering import error_page
from .sections import nav_links, register_nav

bp = Blueprint("dashboard", __name__)
log = logging.getLogger(__name__)

# No inline script or style anywhere: everything comes from /static.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@login_required
def require_agent() -> None:
    """``before_request`` hook for HTML blueprints: signed-out visitors go to the sign-in page."""


def protect(blueprint: Blueprint) -> None:
    """What every HTML blueprint needs: signed-in agents only, and nothing it answers cached."""
    blueprint.before_request(require_agent)
    blueprint.after_request(private)


protect(bp)


SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)


def _security_headers(response: Response) -> Response:
    # A view may set its own; one pass over the headers (this runs on every response).
    headers = response.headers
    present = {name.lower() for name, _ in headers}
    for name, value in SECURITY_HEADERS:
        if name.lower() not in present:
            headers.add(name, value)
    # Browsers honour HSTS only over HTTPS: a request that came over it (directly,
    # or through TRUSTED_PROXIES that say so) tells them never to use plain HTTP.
    # Not includeSubDomains: other hosts of the operator's domain are not ours to pin.
    hsts = current_app.config["HSTS_SECONDS"]
    if hsts and request.is_secure and "strict-transport-security" not in present:
        headers.add("Strict-Transport-Security", f"max-age={hsts}")
    return response


def _csrf_failed(exc: CSRFError):
    # Flask-WTF's reason ("The CSRF tokens do not match.") means nothing to an agent;
    # the log keeps it (boxes behind one load balancer with different SECRET_KEYs, say).
    log.info("CSRF check failed: %s", exc.description)
    if request.endpoint != "auth.sign_in" and not current_user.is_authenticated:
        # The session ended (signed out in another tab, disabled, too old) and its token
        # went with it: signing in again is the answer, back to the page the form was on.
        return login_manager.unauthorized()
    return error_page("Form expired", "Reload the page and try again.", 400)


def _busy(_exc: Contention):
    # A write that kept losing lock races to other writers (checkout traffic, say).
    message = "Too many changes to this customer at once. Try again in a moment."
    return error_page("Busy", message, 503, {"Retry-After": "1"})


def init_dashboard(app: Flask) -> None:
    """Install sign-in, CSRF, htmx and security headers, and register the dashboard."""
    from ..api import bp as api_bp

    htmx.init_app(app)
    csrf.init_app(app)
    # The JSON API authenticates with API keys, not cookies, so it needs no CSRF token.
    csrf.exempt(api_bp)
    init_auth(app)
    app.after_request(_security_headers)
    app.register_error_handler(CSRFError, _csrf_failed)
    # The JSON API blueprints answer Contention with their own JSON handler.
    app.register_error_handler(Contention, _busy)
    register_nav("Customers", "dashboard.home", order=10)
    register_nav("Audit", "dashboard.audit", order=90)
    app.register_blueprint(bp)
    app.context_processor(lambda: {"nav_links": nav_links()})
    app.add_template_filter(counted)
    app.add_template_filter(state_lines, "state_lines")


from . import views  # noqa: E402, F401  (attaches the routes to bp)
