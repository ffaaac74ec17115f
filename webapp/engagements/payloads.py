"""Validating event payloads into EventInput, collecting every field problem at once."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from ..api.errors import ApiError
from ..api.payloads import contact_values, string_field, whole_number
from ..identity.rules import InvalidValue, Value, parse_email
from ..models import utcnow
from .models import ANSWERED, CALL, CALL_STATUSES, CHANNELS, DIRECTIONS, ENDED, WEB

MAX_NAME_LENGTH = 200
MAX_SUMMARY_LENGTH = 4000
MAX_URL_LENGTH = 2048
MAX_EXTERNAL_ID_LENGTH = 200
# Clocks disagree a little; an event dated further ahead than this is a client bug
# that would otherwise sit on top of the timeline for good.
FUTURE_TOLERANCE = timedelta(hours=24)
# No engagement is older than this; 0001-01-01 is what a client sends for a time it never set.
EARLIEST_EVENT = datetime(1970, 1, 1)
# What telephony systems send as the caller's number when the caller withheld it or the
# network did not pass it on (compared trimmed, in any case). So are a blank or no number.
WITHHELD_MARKERS = frozenset(
    {"anonymous", "restricted", "private", "unavailable", "unknown", "withheld"}
)


def is_withheld_number(raw: Any) -> bool:
    """Whether a webhook's ``phoneNumber`` says the number is withheld: missing, null,
    blank, or one of ``WITHHELD_MARKERS``. Anything else is read as a number."""
    if raw is None:
        return True
    if not isinstance(raw, str):
        return False
    # ASCII only: lower() makes "unknown" of a Kelvin sign's "\u212a", which no system sends.
    text = raw.strip()
    return not text or (text.isascii() and text.lower() in WITHHELD_MARKERS)


@dataclass(frozen=True)
class EventInput:
    """A validated event, ready for the service."""

    channel: str
    direction: str | None
    values: tuple[Value, ...]
    occurred_at: datetime
    name: str | None = None
    summary: str | None = None
    url: str | None = None
    duration_seconds: int | None = None
    external_id: str | None = None
    # The client sent occurredAt (else it is the time the event arrived, which a retry's
    # is not): a repeat of an externalId must then carry the same time.
    occurred_at_sent: bool = False


def parse_timestamp(raw: str) -> datetime:
    """An ISO 8601 date-time as naive UTC (no offset means UTC). Raises ValueError.

    RFC 3339 lets ``t`` and ``z`` be lower case; ``fromisoformat`` wants them upper.
    """
    moment = datetime.fromisoformat(raw.upper())
    if moment.tzinfo is not None:
        try:
            moment = moment.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:
            # 0001-01-01T00:00+01:00 has no UTC form in a datetime.
            raise ValueError(f"{raw} is out of range") from None
    return moment


def _occurred_at(payload: dict[str, Any], fields: dict[str, str]) -> datetime:
    now = utcnow()
    raw = payload.get("occurredAt")
    if raw is None:
        return now
    if not isinstance(raw, str):
        fields["occurredAt"] = "must be an ISO 8601 date-time string"
        return now
    try:
        moment = parse_timestamp(raw.strip())
    except ValueError:
        fields["occurredAt"] = "not an ISO 8601 date-time, e.g. 2026-11-23T12:30:00Z"
        return now
    if moment > now + FUTURE_TOLERANCE:
        fields["occurredAt"] = "lies more than a day in the future"
    elif moment < EARLIEST_EVENT:
        fields["occurredAt"] = "lies before 1970 (an unset time sent as a zero date?)"
    return moment


def _choice(
    payload: dict[str, Any], name: str, allowed: tuple[str, ...], fields: dict[str, str]
) -> str | None:
    value = payload.get(name)
    if value is None:
        return None
    if value not in allowed:
        fields[name] = f"must be one of {', '.join(allowed)}"
        return None
    return value


def _url(payload: dict[str, Any], fields: dict[str, str]) -> str | None:
    url = string_field(payload, "url", fields, limit=MAX_URL_LENGTH)
    if url is None:
        return None
    # Shown as a link on the dashboard: anything but http(s) could run script there.
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket, say
        fields["url"] = "must be an absolute http or https URL"
        return None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        fields["url"] = "must be an absolute http or https URL"
        return None
    return url


def _is_seconds(value: Any) -> bool:
    """Whether ``value`` is a call's length: a whole number of seconds a database integer holds."""
    return not isinstance(value, bool) and isinstance(value, int) and 0 <= value < 2**31


def _duration(payload: dict[str, Any], channel: str | None, fields: dict[str, str]) -> int | None:
    value = whole_number(payload.get("durationSeconds"))
    if value is None:
        return None
    if channel != CALL:
        fields["durationSeconds"] = "only calls have a duration"
        return None
    if not _is_seconds(value):
        fields["durationSeconds"] = "must be a whole number of seconds, 0 or more"
        return None
    return value


def event_input(payload: Any) -> EventInput:
    """Validate one event object; an ApiError (400) lists every field that is wrong."""
    if not isinstance(payload, dict):
        raise ApiError(400, "invalid_body", "an event must be a JSON object")
    fields: dict[str, str] = {}
    channel = _choice(payload, "channel", CHANNELS, fields)
    if channel is None and "channel" not in fields:
        fields["channel"] = f"is required, one of {', '.join(CHANNELS)}"
    direction = _choice(payload, "direction", DIRECTIONS, fields)
    if channel == WEB and direction is not None:
        fields["direction"] = "page views have no direction; leave it out"
    elif channel not in (None, WEB) and direction is None and "direction" not in fields:
        fields["direction"] = "is required: inbound or outbound"
    values = contact_values(payload, fields)
    event = EventInput(
        channel=channel or "",
        direction=direction,
        values=tuple(values),
        occurred_at=_occurred_at(payload, fields),
        name=string_field(payload, "name", fields, limit=MAX_NAME_LENGTH),
        # A message's text: its lines and tabs are kept.
        summary=string_field(payload, "summary", fields, limit=MAX_SUMMARY_LENGTH, multiline=True),
        url=_url(payload, fields),
        duration_seconds=_duration(payload, channel, fields),
        external_id=string_field(payload, "externalId", fields, limit=MAX_EXTERNAL_ID_LENGTH),
        occurred_at_sent=payload.get("occurredAt") is not None,
    )
    if fields:
        raise ApiError(400, "invalid_field", "some fields are not valid", fields)
    if not values:
        raise ApiError(
            400,
            "missing_identifier",
            "send a non-empty email or phoneNumber: an event belongs to a customer",
            {
                "email": "email or phoneNumber is required",
                "phoneNumber": "email or phoneNumber is required",
            },
        )
    return event


@dataclass(frozen=True)
class CallStatusInput:
    """A validated POST /calls/status: what the phone system says of a call that rang."""

    call_id: str
    status: str
    # The answering agent's sign-in e-mail as agents are stored (lower case); answers only.
    agent: str | None = None
    # The call's length as the phone system counted it; ends only.
    duration_seconds: int | None = None


def call_status_input(payload: dict[str, Any]) -> CallStatusInput:
    """Validate a call status; an ApiError (400) lists every field that is wrong."""
    fields: dict[str, str] = {}
    call_id = string_field(payload, "callId", fields, limit=MAX_EXTERNAL_ID_LENGTH)
    if call_id is None and "callId" not in fields:
        fields["callId"] = "is required: the callId the call rang with (POST /calls/incoming)"
    status = payload.get("status")
    if status not in CALL_STATUSES:
        fields["status"] = f"is required, one of {', '.join(CALL_STATUSES)}"
    agent = None
    raw_agent = payload.get("agent")
    if raw_agent is not None:
        if status == ENDED:
            fields["agent"] = "goes with status answered only"
        elif not isinstance(raw_agent, str):
            fields["agent"] = "must be a string or null"
        elif raw_agent.strip():
            try:
                agent = parse_email(raw_agent).key
            except InvalidValue:
                fields["agent"] = "must be the e-mail address the agent signs in with"
    duration = whole_number(payload.get("durationSeconds"))
    if duration is not None:
        if status == ANSWERED:
            fields["durationSeconds"] = "goes with status ended only"
        elif not _is_seconds(duration):
            fields["durationSeconds"] = "must be a whole number of seconds, 0 or more"
            duration = None
    if fields:
        raise ApiError(400, "invalid_field", "some fields are not valid", fields)
    return CallStatusInput(call_id, status, agent, duration)
