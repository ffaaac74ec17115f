"""Reading and validating JSON request bodies into domain values."""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

from flask import Request

from ..identity.rules import InvalidValue, Value, parse_email, parse_phone
from ..text import free_text_problem
from .errors import ApiError


def json_object(request: Request) -> dict[str, Any]:
    """The request body as a JSON object, or an ApiError saying what is wrong with it.

    Parsed once per request: a rate limit keyed by a body field reads it
    before the view does.
    """
    parsed = request.environ.get(_PARSED)
    if parsed is not None:
        return parsed
    if not request.is_json:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        )
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        # Read as it came, a gzip body was "not valid UTF-8 text", which sent the
        # client looking for a wrong character instead of at its compression.
        raise ApiError(
            415,
            "unsupported_media_type",
            f"a body compressed with Content-Encoding {coding[:40]!r} is not accepted; "
            "send it uncompressed",
            headers={"Accept-Encoding": "identity"},
        )
    raw = request.get_data(cache=True)  # 413 past MAX_CONTENT_LENGTH
    try:
        # Decoded strictly first: json.loads would take a lone surrogate's
        # bytes (ED A0 80) as a character that no database column can store.
        text = raw.decode(json.detect_encoding(raw))
    except UnicodeDecodeError:
        raise ApiError(400, "invalid_json", "the body is not valid UTF-8 text") from None
    try:
        payload = json.loads(text)
    except (ValueError, RecursionError):
        raise ApiError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_body", "the body must be a JSON object")
    # JSON may spell a lone UTF-16 surrogate ("\\ud800") too; the full check runs
    # only for bodies that hold such an escape at all.
    if _SURROGATE_ESCAPE.search(text) and _holds_lone_surrogate(payload):
        raise ApiError(400, "invalid_json", "the body holds a string that is not valid Unicode")
    request.environ[_PARSED] = payload
    return payload


_PARSED = "webapp.json_object"
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _holds_lone_surrogate(payload: Any) -> bool:
    """Whether any key or string in ``payload`` holds a lone surrogate.

    Walks with a list, not recursion: the body may be nested as deeply as
    json.loads allows, and a recursive walk would run out of stack there.
    """
    pending = [payload]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def string_field(
    payload: dict[str, Any],
    name: str,
    fields: dict[str, str],
    *,
    limit: int | None = None,
    free_text: bool = True,
    multiline: bool = False,
) -> str | None:
    """A string field, trimmed; None when missing, null, blank or wrong (added to ``fields``).

    ``free_text`` fields are refused when they hold control characters
    (``multiline`` ones may keep tabs and line breaks); identifiers pass
    ``free_text=False`` because their own parsers check them.
    """
    value = payload.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        fields[name] = "must be a string or null"
        return None
    value = value.strip()
    if limit is not None and len(value) > limit:
        fields[name] = f"must be at most {limit} characters"
        return None
    problem = free_text_problem(value, multiline=multiline) if free_text else None
    if problem:
        fields[name] = problem
        return None
    return value or None


# Past 2**53 a float no longer holds every whole number: its digits would not be the ones sent.
_EXACT_FLOAT_LIMIT = 2**53


def whole_number(value: Any) -> Any:
    """``value`` as an int when it is a JSON number with no fraction (5.0 is 5), else unchanged.

    JSON and JSON Schema make no difference between 5 and 5.0, but Python's json
    reads the second as a float.
    """
    if isinstance(value, float) and value.is_integer() and abs(value) < _EXACT_FLOAT_LIMIT:
        return int(value)
    return value


def _phone_text(payload: dict[str, Any], name: str, fields: dict[str, str]) -> str | None:
    """A phone field: a string, or a whole non-negative JSON number (123456 == "123456")."""
    value = whole_number(payload.get(name))
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            fields[name] = "a phone number cannot be negative"
            return None
        return str(value)
    if value is not None and not isinstance(value, str):
        fields[name] = "must be a string, a whole number or null"
        return None
    return string_field(payload, name, fields, free_text=False)


def contact_values(
    payload: dict[str, Any],
    fields: dict[str, str],
    email_field: str = "email",
    phone_field: str = "phoneNumber",
) -> list[Value]:
    """Validate the e-mail and phone of a payload; problems are added to ``fields``."""
    values: list[Value] = []
    for name, read, parse in (
        # The identifier parsers refuse control characters with their own messages.
        (email_field, partial(string_field, free_text=False), parse_email),
        (phone_field, _phone_text, parse_phone),
    ):
        text = read(payload, name, fields)
        if text is None:
            continue
        try:
            values.append(parse(text))
        except InvalidValue as exc:
            fields[name] = str(exc)
    return values


def identify_values(payload: dict[str, Any]) -> list[Value]:
    """The values of an identify request: at least one valid e-mail or phone."""
    fields: dict[str, str] = {}
    values = contact_values(payload, fields)
    if fields:
        raise ApiError(400, "invalid_field", "some fields are not valid", fields)
    if not values:
        raise ApiError(
            400,
            "missing_identifier",
            "send a non-empty email or phoneNumber",
            {
                "email": "email or phoneNumber is required",
                "phoneNumber": "email or phoneNumber is required",
            },
        )
    return values
