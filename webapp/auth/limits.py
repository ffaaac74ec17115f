"""Rate limits on signing in: refused attempts per account and per client address.

Only refused attempts count (Flask-Limiter's ``deduct_when``), so an agent who
signs in is never slowed down. A request is checked against both limits
before the view runs, so a limited attempt never reaches the password check:
the right password is refused like any other, and says nothing.
"""

from __future__ import annotations

import time

from flask import Response, current_app, request

from ..extensions import limit_key_digest, limiter
from .service import lookup_key


def account_limit() -> str:
    """Refused attempts allowed per account (SIGN_IN_LIMIT_PER_ACCOUNT)."""
    return current_app.config["SIGN_IN_LIMIT_PER_ACCOUNT"]


def address_limit() -> str:
    """Refused attempts allowed per client address (SIGN_IN_LIMIT_PER_ADDRESS)."""
    return current_app.config["SIGN_IN_LIMIT_PER_ADDRESS"]


def account_key() -> str:
    """The per-account key: the e-mail typed, normalised as the agent lookup does it, hashed.

    Every spelling that finds one agent shares one counter, unknown e-mails are
    counted like known ones (no hint of which exist), and the key has a fixed
    length with no address in clear in the shared storage (keyed with SECRET_KEY, so
    that a list of e-mails cannot be checked against it either).
    """
    typed = lookup_key(request.form.get("email", ""))
    return "account:" + limit_key_digest(typed)


def refused(response: Response) -> bool:
    """Whether an attempt counts: the form came back refused (422), credentials or input.

    A sign-in (302), a missing CSRF token (400, no password was checked) and an
    attempt already limited (429) do not.
    """
    return response.status_code == 422


def retry_after_seconds() -> int:
    """Seconds until every limit this request broke lets an attempt through again."""
    breached = [limit for limit in limiter.current_limits if limit.breached]
    resets = [limit.reset_at for limit in breached or limiter.current_limits]
    if not resets:
        return 60
    # The same rounding Flask-Limiter uses for the header it adds after the handler.
    return max(1, int(max(resets) - time.time()))
