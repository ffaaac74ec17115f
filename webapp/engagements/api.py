"""The engagements JSON API: record events, look customers up, and the telephony webhook."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..api import json_error_handlers, require_api_key, require_configured_api_key
from ..api.errors import ApiError
from ..api.payloads import contact_values, json_object, string_field
from .history import cards_holding, match_word
from .payloads import (
    MAX_EXTERNAL_ID_LENGTH,
    call_status_input,
    event_input,
    is_withheld_number,
)
from .screenpop import CallIdReused, CallStatusConflict, record_call_status, record_incoming_call
from .service import Recorded, record_events

bp = Blueprint("engagements_api", __name__)

MAX_BATCH = 500
# A batch of 500 page views is well past the 64 KiB that other endpoints accept.
BATCH_MAX_BYTES = 1024 * 1024


def _recorded_json(recorded: Recorded) -> dict:
    return {
        "id": recorded.event_id,
        "contactId": recorded.contact_id,
        "customerId": recorded.customer_id,
        "duplicate": recorded.duplicate,
    }


@bp.post("/events")
@require_api_key
def record_event():
    """Record one engagement; 201 when stored, 200 when it repeats a stored externalId."""
    event = event_input(json_object(request))
    (result,) = record_events([event])
    if isinstance(result, ApiError):
        raise result
    return jsonify(event=_recorded_json(result)), 200 if result.duplicate else 201


@bp.post("/events/batch")
@require_api_key
def record_event_batch():
    """Record up to 500 engagements, answering a result per event in the order sent."""
    request.max_content_length = current_app.config.get("EVENTS_BATCH_MAX_BYTES", BATCH_MAX_BYTES)
    payload = json_object(request)
    events = payload.get("events")
    if not isinstance(events, list) or not events:
        raise ApiError(
            400, "invalid_field", "send the events as a non-empty list", {"events": "required"}
        )
    if len(events) > MAX_BATCH:
        raise ApiError(
            400,
            "too_many_events",
            f"a batch holds at most {MAX_BATCH} events",
            {"events": f"{len(events)} events, at most {MAX_BATCH}"},
        )
    results: list[dict | None] = [None] * len(events)
    valid, positions = [], []
    for index, raw in enumerate(events):
        try:
            valid.append(event_input(raw))
            positions.append(index)
        except ApiError as exc:
            results[index] = _error_result(index, exc)
    for index, outcome in zip(positions, record_events(valid), strict=True):
        if isinstance(outcome, ApiError):
            results[index] = _error_result(index, outcome)
        else:
            status = 200 if outcome.duplicate else 201
            results[index] = {"index": index, "status": status, "event": _recorded_json(outcome)}
    stored = sum(1 for r in results if r and r["status"] == 201)
    return jsonify(stored=stored, results=results)


def _error_result(index: int, exc: ApiError) -> dict:
    return {
        "index": index,
        "status": exc.status,
        "error": {"code": exc.code, "message": exc.message, "fields": exc.fields},
    }


def _lookup_limit() -> int:
    raw = request.args.get("limit", "10")
    # isascii: "²".isdigit() holds, but int("²") fails; and int() refuses 4,300 digits.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= 50:
        raise ApiError(400, "invalid_field", "limit must be 1 to 50", {"limit": "1 to 50"})
    return int(raw)


@bp.get("/api/v1/customers/lookup")
@require_configured_api_key
def lookup_customer():
    """The customer holding a phone or e-mail with its recent engagements; every one if several."""
    given = {name: request.args.get(name) for name in ("phone", "email") if name in request.args}
    if len(given) != 1:
        raise ApiError(
            400,
            "invalid_query",
            "send exactly one of the query parameters phone and email",
            {"phone": "phone or email is required", "email": "phone or email is required"},
        )
    limit = _lookup_limit()
    fields: dict[str, str] = {}
    values = contact_values(given, fields, email_field="email", phone_field="phone")
    if fields or not values:
        fields = fields or {name: "must not be empty" for name in given}
        raise ApiError(400, "invalid_field", "the query value is not valid", fields)
    cards, blocked = cards_holding(values[0], recent=limit)
    if blocked:
        raise ApiError(404, "blocked_identifier", "this value is blocked: it names no customer")
    if not cards:
        raise ApiError(404, "not_found", "no customer holds this value")
    return jsonify(
        match=match_word(len(cards)),
        customer=cards[0].to_json() if len(cards) == 1 else None,
        customers=[card.to_json() for card in cards],
    )


@bp.post("/calls/incoming")
@require_api_key
def incoming_call():
    """Telephony webhook: record the inbound call and pop it up on every agent's dashboard."""
    payload = json_object(request)
    fields: dict[str, str] = {}
    # A withheld number (no number, or "anonymous" and the like) is a normal call:
    # it pops up saying so, and matches no one.
    withheld = is_withheld_number(payload.get("phoneNumber"))
    values = [] if withheld else contact_values({"phoneNumber": payload["phoneNumber"]}, fields)
    call_id = string_field(payload, "callId", fields, limit=MAX_EXTERNAL_ID_LENGTH)
    if call_id is None and "callId" not in fields and payload.get("callId") is not None:
        fields["callId"] = "must not be blank"
    if fields:
        raise ApiError(400, "invalid_field", "some fields are not valid", fields)
    try:
        call = record_incoming_call(values[0] if values else None, call_id)
    except CallIdReused as exc:
        raise ApiError(
            422,
            "call_id_reused",
            f"{exc}: a retry of a call sends its number again; another call needs its own callId",
            {"callId": "came before with another number"},
        ) from None
    return (
        jsonify(
            popId=call.pop_id,
            eventId=call.event_id,
            match="withheld" if call.withheld else match_word(len(call.customer_ids)),
            customerIds=call.customer_ids,
            blocked=call.blocked,
        ),
        201,
    )


def _iso(moment) -> str | None:
    return None if moment is None else moment.isoformat() + "Z"


@bp.post("/calls/status")
@require_api_key
def call_status():
    """Telephony webhook: a call that rang was answered or ended; its pops leave the screens
    of the agents who did not take it."""
    given = call_status_input(json_object(request))
    try:
        recorded = record_call_status(
            given.call_id, given.status, given.agent, given.duration_seconds
        )
    except CallStatusConflict as exc:
        raise ApiError(
            422,
            "call_status_conflict",
            "this call's status came before saying otherwise; nothing was changed",
            exc.fields,
        ) from None
    if recorded is None:
        raise ApiError(
            404,
            "not_found",
            "no call rang with this callId: send POST /calls/incoming when the call rings",
            {"callId": "no call rang with it"},
        )
    call = recorded.call
    return jsonify(
        popId=recorded.pop_id,
        eventId=recorded.event_id,
        callId=given.call_id,
        status=call.status,
        answeredAt=_iso(call.answered_at),
        answeredBy=call.answered_by,
        endedAt=_iso(call.ended_at),
        durationSeconds=call.duration_seconds,
    )


json_error_handlers(bp)
