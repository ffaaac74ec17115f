"""Rate limits on signing in: refused attempts per account and per client address.

Every attempt is counted as it is checked, before the view runs, in one atomic
step of the storage (Flask-Limiter's ``hit``: increment, then compare), so
simultaneous attempts cannot all pass a limit with one attempt left; a limited
attempt never reaches the password check, and the right password is refused
like any other, saying nothing. Only refused attempts keep their count: once
the answer is known, ``give_back_unless_refused`` takes back the count of any
other (a sign-in, a limited attempt, a failure of the app), so an agent who
signs in is never slowed down.

Checked first and counted only after the answer (``deduct_when``), as these
limits were, 24 wrong passwords sent together through a 4-worker gunicorn on
Redis had 12 to 18 of their passwords checked against an account's allowance
of 5 (8 to 19 against an address's): each was checked while the others were
still being answered.
"""

from __future__ import annotations

import logging
import time

from flask import Response, current_app, g, request

from ..extensions import limit_key_digest, limiter
from .service import lookup_key

log = logging.getLogger(__name__)


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

    A sign-in (302), a missing CSRF token (400, no password was checked), an
    attempt already limited (429) and an app failure (a 503 when the database
    does not answer) do not.
    """
    return response.status_code == 422


# A count is given back only while the window it went into has at least this long to run
# (seconds): a Redis says how long a counter lives in whole seconds, and the give-back must
# reach the storage before the window ends.
GIVE_BACK_MARGIN_S = 2


def note_counted_windows() -> None:
    """Called as soon as the limits have counted an attempt (first thing in the view and in
    the 429's handler): when each window the attempt went into ends.

    Read at the give-back instead, a window that ended while the request was answered
    would not be told from the next one.
    """
    g.sign_in_windows = [(counted, counted.window) for counted in limiter.current_limits]


def give_back_unless_refused(response: Response) -> Response:
    """``after_request`` of the sign-in page: an attempt not refused gives its counts back.

    The limits counted the attempt as they checked it, each of those checked
    (all of them, or up to the first one it broke); each gets one back, in one
    atomic step of the storage, as it was taken. The limit it broke, counted
    past its allowance, comes back to where it was. Should the storage fail
    here, the attempt stays counted: the limit errs on the safe side.

    A count goes back only into the window it went into, while that has more than
    GIVE_BACK_MARGIN_S to run; else it stays, and ends with its window. Given back
    after its window had ended, it lowered the next window's counter (to -1 when
    none had started), one attempt more there: an attacker at the limit could send
    attempts as a window ended, each refused (429) and each one more guess after.
    """
    if request.endpoint != "auth.sign_in" or refused(response):
        return response
    for counted, (ends_at, remaining) in g.pop("sign_in_windows", []):
        if remaining >= counted.limit.amount or time.time() + GIVE_BACK_MARGIN_S >= ends_at:
            continue  # the window it was counted in is over, or nearly: the count goes with it
        try:
            limiter.limiter.hit(counted.limit, *counted.request_args, cost=-1)
        except Exception:  # the storage's own errors, whichever storage it is
            log.warning("sign-in: could not give back a rate-limit count", exc_info=True)
    return response


def retry_after_seconds() -> int:
    """Seconds until every limit this request broke lets an attempt through again."""
    breached = [limit for limit in limiter.current_limits if limit.breached]
    resets = [limit.reset_at for limit in breached or limiter.current_limits]
    if not resets:
        return 60
    # The same rounding Flask-Limiter uses for the header it adds after the handler.
    return max(1, int(max(resets) - time.time()))
