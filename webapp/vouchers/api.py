"""The vouchers JSON API: generate, validate (redeem) and list, paths kept from the old service."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask_limiter import RateLimitExceeded
from flask_limiter.util import get_remote_address
from werkzeug.exceptions import HTTPException

from ..api import json_error_handlers, require_configured_api_key
from ..api.errors import ApiError, error_response
from ..api.payloads import json_object
from ..extensions import limit_key_digest, limiter
from ..identity.rules import InvalidValue, Value, parse_email
from ..models import utcnow
from .rules import (
    STATUSES,
    VALID,
    InvalidVoucherValue,
    check_future,
    discount_percent,
    iso_utc,
    normalise_code,
    parse_discount,
    parse_expiry,
    parse_offer_name,
)
from .service import (
    VoucherError,
    VoucherView,
    issue_voucher,
    list_for_email,
    redeem,
    replay_of_issue,
)

bp = Blueprint("vouchers_api", __name__)

_PARSED = "webapp.vouchers.parsed"


def _parsed(parse, raw: str):
    """``parse(raw)``, worked out once per request; the error it raised is raised again.

    A validation's rate limits key on its e-mail and code, and the view reads both
    again: the e-mail went through email-validator three times a request (once for
    each limit of the default per-client pair, once in the view), the code through
    its normalisation three times (the per-code limit's exemption and key, the view).
    """
    done = request.environ.setdefault(_PARSED, {})
    if (parse, raw) not in done:
        try:
            done[parse, raw] = parse(raw)
        except (InvalidValue, InvalidVoucherValue) as exc:
            done[parse, raw] = exc
    result = done[parse, raw]
    if isinstance(result, Exception):
        raise result
    return result


def _email(payload: dict[str, Any], fields: dict[str, str]) -> Value | None:
    raw = payload.get("email")
    if not isinstance(raw, str) or not raw.strip():
        fields["email"] = "a non-empty email is required"
        return None
    try:
        return _parsed(parse_email, raw)
    except InvalidValue as exc:
        fields["email"] = str(exc)
        return None


def _flag(payload: dict[str, Any], name: str, fields: dict[str, str]) -> bool | None:
    value = payload.get(name)
    if value is not None and not isinstance(value, bool):
        fields[name] = "must be true or false"
        return None
    return value


def _field(payload: dict[str, Any], name: str, parse, fields: dict[str, str]):
    """``parse(payload[name])``, or None with the reason added to ``fields``."""
    try:
        return parse(payload.get(name))
    except InvalidVoucherValue as exc:
        fields[name] = str(exc)
        return None


# Long enough for a UUID or a checkout's own order reference with a prefix.
MAX_IDEMPOTENCY_KEY = 200


def _idempotency_key(fields: dict[str, str]) -> str | None:
    """The request's Idempotency-Key header: printable ASCII, 1 to 200 characters, or absent."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    key = raw.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not (key.isascii() and key.isprintable()):
        fields["Idempotency-Key"] = (
            f"1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters, such as a UUID"
        )
        return None
    return key


def _answer(body: dict, status: int, replayed: bool):
    """The JSON answer; a replayed one (same Idempotency-Key) says so in a header."""
    response = jsonify(body)
    response.status_code = status
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def _refuse_if(fields: dict[str, str]) -> None:
    if fields:
        raise ApiError(400, "invalid_field", "some fields are not valid", fields)


def _code(raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidVoucherValue("a voucher code is required")
    return _parsed(normalise_code, raw)


def _issued_json(view: VoucherView) -> dict:
    return {
        "code": view.code,
        "offer_name": view.offer_name,
        "discount": discount_percent(view.discount),
        "expiry": iso_utc(view.expires_at),
    }


def voucher_json(view: VoucherView) -> dict:
    """A voucher as the list answers (and the customer lookup's cards) show it.

    ``redeemable``: whether its owner's validation would succeed now; a valid voucher
    of a once-per-customer offer the customer has redeemed already is not.
    """
    return {
        **_issued_json(view),
        "status": view.status,
        "used_at": iso_utc(view.used_at),
        "redeemable": view.redeemable,
    }


@bp.post("/vouchers/generate")
@require_configured_api_key
def generate():
    """Issue a voucher of an offer to the customer an e-mail identifies."""
    payload = json_object(request)
    fields: dict[str, str] = {}
    email = _email(payload, fields)
    offer_name = _field(payload, "offer_name", parse_offer_name, fields)
    discount = _field(payload, "discount", parse_discount, fields)
    key = _idempotency_key(fields)
    # With a key, an expiry that has passed is checked after the replay: the retry of a
    # request answered before gets its voucher (valid for minutes, say, and the retry
    # queued for longer), as any other retry does.
    now = None if key else utcnow()
    expires_at = _field(payload, "expiry", lambda raw: parse_expiry(raw, now), fields)
    once = _flag(payload, "once_per_customer", fields)
    _refuse_if(fields)
    view = None if key is None else replay_of_issue(key, email, offer_name, discount, expires_at)
    if view is None:
        if key is not None:
            try:
                check_future(expires_at, utcnow())
            except InvalidVoucherValue as exc:
                fields["expiry"] = str(exc)
            _refuse_if(fields)
        view = issue_voucher(
            email, offer_name, discount, expires_at, once_per_customer=once, idempotency_key=key
        )
    return _answer(_issued_json(view), 200 if view.replayed else 201, view.replayed)


def _client_limit() -> str:
    return current_app.config["VOUCHER_VALIDATE_LIMIT_PER_CLIENT"]


def _code_limit() -> str:
    return current_app.config["VOUCHER_VALIDATE_LIMIT_PER_CODE"]


def _canonical_code() -> str | None:
    """The request's code in its one canonical spelling; None when the body holds none.

    A body that cannot be read (over the size limit, cut short) holds none either: the
    view answers it (413, 400). Raised here, in the limiter's check, the error was
    taken for the rate-limit storage failing, which then counted in a fresh in-memory
    store for a while: a code's used-up allowance started again.
    """
    try:
        return _code(json_object(request).get("code"))
    except (ApiError, InvalidVoucherValue, HTTPException):
        return None


def _code_key() -> str:
    """The per-code rate-limit key: the canonical code, so spellings share one counter.

    Hashed with the app's SECRET_KEY (HMAC), so that no voucher code stands in clear
    in the shared storage (a Redis other services may read) or in the limiter's log
    lines. A plain SHA-256 would not do: the code space (50 bits) can be searched
    offline against it.
    """
    code = _canonical_code() or ""
    return "code:" + limit_key_digest(code)


def _client_key() -> str:
    """The per-client key: the client's address and the e-mail the attempt is made for.

    Every validation of a shop comes from its checkout's address: counted by
    the address alone, the limit (30 a minute by default) was one allowance
    for all the shop's customers together, used up by a busy hour or by one
    shopper trying codes, and then the checkout got 429 for everyone. A code
    redeems only with its customer's e-mail, so the attempts that matter are
    those made for one e-mail. A body without a well-formed e-mail (a 400)
    counts against the address alone. The e-mail is hashed, as the code is.
    """
    address = get_remote_address()
    email = _canonical_email()
    if email is None:
        return f"client:{address}"
    return f"client:{address}:email:" + limit_key_digest(email)


def _canonical_email() -> str | None:
    """The matching key of the request's e-mail; None when the body holds no well-formed one."""
    try:
        raw = json_object(request).get("email")
        return _parsed(parse_email, raw).key if isinstance(raw, str) and raw.strip() else None
    except (ApiError, InvalidValue, HTTPException):
        return None


def _no_code() -> bool:
    """No code to count against: the view answers the bad body with a 400 itself.

    Such requests still count against the client's own limit. One shared
    counter for every malformed body would let a few typos, from anyone,
    turn the next customer's typo into a 429.
    """
    return _canonical_code() is None


# The key is checked before the limits: a call without a valid key gets its 401 and never
# reaches them. It neither uses up the checkout's attempts or locks a code it has seen,
# nor learns how many attempts a code or an e-mail has left (the limit's headers, or a
# 429 in place of the 401 once a code's allowance is used up: a sign that someone is
# redeeming it). Flask-Limiter checks a view's declared limits in their decorator, not
# before the request, so the order of the decorators is the order of the checks. Past
# the key, each attempt is counted as it is checked, one atomic step in the storage,
# so simultaneous attempts cannot all pass a limit with one attempt left.
@bp.post("/vouchers/validate")
@require_configured_api_key
@limiter.limit(_client_limit, key_func=_client_key)
@limiter.limit(_code_limit, key_func=_code_key, exempt_when=_no_code)
def validate():
    """Redeem a voucher for a customer (``dry_run``: only check that it would succeed)."""
    payload = json_object(request)
    fields: dict[str, str] = {}
    code = _field(payload, "code", _code, fields)
    email = _email(payload, fields)
    dry_run = _flag(payload, "dry_run", fields)
    key = _idempotency_key(fields)
    _refuse_if(fields)
    view = redeem(code, email, dry_run=bool(dry_run), idempotency_key=key)
    body = {
        "code": view.code,
        "offer_name": view.offer_name,
        "discount": discount_percent(view.discount),
        "used_at": iso_utc(view.used_at),
    }
    return _answer(body, 200, view.replayed)


def _list_query() -> dict[str, Any]:
    """The list parameters: the query string, else the JSON body old clients send on GET."""
    if "email" in request.args or not request.get_data(cache=True):
        return request.args.to_dict()
    return json_object(request)


@bp.get("/vouchers")
@require_configured_api_key
def list_vouchers():
    """The vouchers of the customer an e-mail belongs to; valid ones unless ``status`` says."""
    query = _list_query()
    fields: dict[str, str] = {}
    email = _email(query, fields)
    status = query.get("status") or VALID
    if status not in (*STATUSES, "all"):
        fields["status"] = "must be valid, used, expired, voided or all"
    _refuse_if(fields)
    return jsonify(vouchers=[voucher_json(v) for v in list_for_email(email, status)])


@bp.errorhandler(VoucherError)
def _voucher_error(exc: VoucherError):
    fields = {exc.field: exc.message} if exc.field else {}
    return error_response(exc.status, exc.code, exc.message, fields)


@bp.errorhandler(RateLimitExceeded)
def _rate_limited(exc: RateLimitExceeded):
    current = limiter.current_limit
    # The same rounding Flask-Limiter uses for the header it adds after this.
    retry_after = max(1, int(current.reset_at - time.time())) if current else 60
    return error_response(
        429,
        "rate_limited",
        f"too many attempts ({exc.description}); try again in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


json_error_handlers(bp)
