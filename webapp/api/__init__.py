"""The JSON API front door: identify, health and the OpenAPI document."""

from __future__ import annotations

import hashlib
import hmac
import logging
from functools import lru_cache, wraps
from pathlib import Path

import yaml
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import HTTPException

from ..auth import private
from ..database import Contention, describe, refuses_a_value, schema_revisions, schema_versions
from ..extensions import db, limiter
from ..identity.rules import EMAIL, PHONE, Customer, Value
from ..identity.service import BlockedValues, blocked_keys, identify, load_customer_rows
from .errors import ApiError, api_error_response, error_response, unstorable_value_error
from .payloads import identify_values, json_object

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")

# Paths whose errors are JSON even when routing fails (404/405 never reach a view).
JSON_PATHS = ("/identify", "/healthz", "/openapi.json", "/events", "/calls", "/api/v1", "/vouchers")


# The checkout's endpoints carry no rate limit (API keys guard them), and the
# limiter does not even look at them (see webapp/extensions.py).
limiter.unchecked.update({"api.identify_customer", "api.healthz"})


def load_openapi() -> dict:
    """The API description, parsed once at start-up."""
    with OPENAPI_PATH.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _refuse(message: str) -> ApiError:
    return ApiError(
        401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="identity"'}
    )


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@lru_cache(maxsize=4)
def _key_digests(keys: tuple[str, ...]) -> tuple[bytes, ...]:
    """The configured keys' digests, worked out once, not on every request."""
    return tuple(_digest(key) for key in keys)


def _check_api_key(open_when_unset: bool) -> None:
    keys = current_app.config["API_KEYS"]
    if not keys:
        if open_when_unset:
            return
        raise _refuse(
            "this endpoint needs an API key and the server has none: "
            "set API_KEYS on the server, then send Authorization: Bearer <key>"
        )
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    # Digests of equal length, each key compared: the time taken tells neither a key's
    # length (compare_digest returns early on unequal lengths) nor which key matched.
    sent = _digest(token.strip())
    matches = [hmac.compare_digest(sent, key) for key in _key_digests(tuple(keys))]
    if scheme.lower() != "bearer" or not any(matches):
        raise _refuse("send a valid API key as Authorization: Bearer <key>")


def require_api_key(view):
    """Ask for ``Authorization: Bearer <key>`` when API_KEYS is configured; open when not."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        _check_api_key(open_when_unset=True)
        return view(*args, **kwargs)

    return wrapper


def require_configured_api_key(view):
    """Always ask for a key: with API_KEYS unset the endpoint answers 401.

    For endpoints that hand out or reveal value (vouchers, the customer lookup
    that lists them): a box whose dashboard agents can reach must not let
    anyone who reaches it issue a 100% voucher.
    """

    @wraps(view)
    def wrapper(*args, **kwargs):
        _check_api_key(open_when_unset=False)
        return view(*args, **kwargs)

    return wrapper


# Open while API_KEYS is unset, named in the start-up warning.
OPEN_WITHOUT_KEYS = (
    "POST /identify, POST /events, POST /events/batch, POST /calls/incoming and POST /calls/status"
)


def customer_json(customer: Customer) -> dict:
    """The task's answer shape, with the historical misspelt key kept for old clients."""
    return {
        "primaryContactId": customer.primary_id,
        "primaryContatctId": customer.primary_id,
        "emails": customer.emails,
        "phoneNumbers": customer.phone_numbers,
        "secondaryContactIds": customer.secondary_ids,
    }


@bp.post("/identify")
@require_api_key
def identify_customer():
    """Link the order's e-mail and phone into one customer and answer with it."""
    values = identify_values(json_object(request))
    return jsonify(contact=customer_json(identify(values, source="checkout")))


@bp.get("/healthz")
def healthz():
    """200 when the database answers and its schema is upgraded for this code; 503 when not.

    A schema behind the code (``db upgrade`` not run, or run on another
    database) answers 503 ``not_upgraded``: every request touching what is
    missing would fail. A schema ahead of the code (upgraded, workers not
    restarted yet, as the upgrade steps go) is healthy. Then the read
    /identify starts with runs on keys no row holds: 503 ``unreadable`` when
    it fails.
    """
    try:
        found = schema_versions(db.session.connection())
    except SQLAlchemyError as exc:
        log.warning("health check failed: %s", describe(exc))
        return jsonify(status="unavailable", database="unreachable"), 503
    finally:
        db.session.rollback()
    heads, known = schema_revisions()
    # Behind: no migration ran, or one this code knows that is not its head.
    if found != heads and (not found or found & known - heads):
        log.warning(
            "health check failed: the database has schema revision %s, this version needs %s; "
            "bring it up to date with: flask --app wsgi db upgrade",
            ", ".join(sorted(found)) or "none (no schema yet)",
            ", ".join(sorted(heads)),
        )
        return jsonify(status="unavailable", database="not_upgraded"), 503
    if not _checkout_reads():
        return jsonify(status="unavailable", database="unreadable"), 503
    return jsonify(status="ok", database="ok")


# Keys no request can hold (the phone key has no digits): reading them walks the indexes
# /identify reads through, and finds nothing.
_PROBE = (Value(EMAIL, "", "health@check.invalid"), Value(PHONE, "", "+"))


def _checkout_reads() -> bool:
    """Whether the checkout's read answers: the claims and contacts, through their indexes.

    A SQLite file damaged where those are ("database disk image is malformed"), or
    a table dropped or renamed by hand, failed every /identify while the health
    check, which read only the schema revision, said ok.
    """
    try:
        conn = db.session.connection()
        blocked_keys(conn, [(value.kind, value.key) for value in _PROBE])
        load_customer_rows(conn, _PROBE)
    except SQLAlchemyError as exc:
        log.warning("health check failed: the checkout's read failed: %s", describe(exc))
        return False
    finally:
        db.session.rollback()
    return True


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3.1 description of this JSON API."""
    return jsonify(current_app.extensions["openapi"])


@bp.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return api_error_response(exc)


@bp.errorhandler(BlockedValues)
def _blocked(exc: BlockedValues):
    names = {"email": "email", "phone": "phoneNumber"}
    return error_response(
        422,
        "blocked_identifier",
        "every value in the request is blocked, so it cannot identify a customer",
        {names[v.kind]: "this value is blocked" for v in exc.values},
    )


@bp.errorhandler(Contention)
def _contention(exc: Contention):
    log.warning("%s %s answered 503 busy: %s", request.method, request.path, exc)
    return error_response(
        503,
        "busy",
        "too many concurrent changes to these customers; try again",
        headers={"Retry-After": "1"},
    )


@bp.errorhandler(SQLAlchemyError)
def _database_error(exc: SQLAlchemyError):
    db.session.rollback()
    if refuses_a_value(exc):
        # A check of the request is missing: logged as the bug it is, answered as bad input.
        log.error(
            "the database refused a value on %s %s: %s", request.method, request.path, describe(exc)
        )
        return api_error_response(unstorable_value_error())
    log.error("database error on %s %s: %s", request.method, request.path, describe(exc))
    return error_response(
        503,
        "database_unavailable",
        "the database did not answer; try again",
        headers={"Retry-After": "1"},
    )


# The answers name customers (their e-mails, phones, vouchers): no cache between the
# caller and the service keeps a copy, as none keeps the dashboard's pages.
bp.after_request(private)


def json_error_handlers(blueprint: Blueprint) -> None:
    """Give another JSON API blueprint the answers /identify gives.

    Bad input (ApiError), lost lock races (503 busy) and a database outage
    (503 database_unavailable), all in the API's JSON error shape; and, like
    them, ``Cache-Control: no-store`` on every answer.
    """
    blueprint.register_error_handler(ApiError, _api_error)
    blueprint.register_error_handler(Contention, _contention)
    blueprint.register_error_handler(SQLAlchemyError, _database_error)
    blueprint.after_request(private)


_HTTP_ERROR_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limited",
}


def http_error_json(exc: HTTPException):
    """A werkzeug HTTP error (404, 405, 413, ...) in the API's JSON shape."""
    code = _HTTP_ERROR_CODES.get(exc.code or 500) or (exc.name or "error").lower().replace(" ", "_")
    response = error_response(exc.code or 500, code, exc.description or exc.name)
    if exc.code == 405 and getattr(exc, "valid_methods", None):
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


def wants_json_errors(path: str) -> bool:
    """Whether an HTTP error at ``path`` belongs to the JSON API."""
    return any(path == p or path.startswith(p + "/") for p in JSON_PATHS)
