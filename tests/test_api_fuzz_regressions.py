"""Bugs found by fuzzing the JSON API against its OpenAPI document, on SQLite and MariaDB."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, timedelta

import pytest
from jsonschema import Draft202012Validator
from sqlalchemy import func, select

from tests.builders import contacts
from tests.openapi_check import assert_matches_openapi
from webapp.engagements.models import Engagement
from webapp.extensions import db
from webapp.identity.rules import InvalidValue, parse_phone
from webapp.models import utcnow
from webapp.vouchers.models import Offer, Voucher

# The lookup and the voucher API always need a key; the rest accept it.
pytestmark = pytest.mark.usefixtures("api_key")


def count(model) -> int:
    total = db.session.scalar(select(func.count()).select_from(model))
    db.session.rollback()
    return total


def in_a_month() -> str:
    return (utcnow().replace(tzinfo=UTC) + timedelta(days=30)).isoformat()


def summer_sale(discount) -> dict:
    """A generate body for lorraine, of the Summer sale offer at ``discount``."""
    return {
        "email": "lorraine@hillvalley.edu",
        "offer_name": "Summer sale",
        "discount": discount,
        "expiry": in_a_month(),
    }


@pytest.mark.parametrize(
    "discount",
    [
        # Underflowed to 0 in a 28-digit Decimal context: a voucher worth nothing.
        "1e-999999999",
        # Rounded to 100 in that context: 99.99...% issued as 100%.
        "99.999999999999999999999999999",
        "1.000000000000000000000000000001",
    ],
)
def test_a_discount_is_never_rounded_into_another_one(app, client, discount):
    response = client.post("/vouchers/generate", json=summer_sale(discount))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_field"
    assert set(response.get_json()["error"]["fields"]) == {"discount"}
    assert_matches_openapi(app, "/vouchers/generate", "post", response)
    assert (count(Voucher), count(Offer), contacts()) == (0, 0, [])


@pytest.mark.parametrize(("discount", "shown"), [("12.50", 12.5), ("1E+2", 100), (0.01, 0.01)])
def test_an_exact_discount_written_any_way_is_issued(client, discount, shown):
    response = client.post("/vouchers/generate", json=summer_sale(discount))
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["discount"] == shown


def request_schema_errors(app, path: str, body) -> list[str]:
    """Why ``body`` is not a valid request body of ``POST path`` by the served OpenAPI document."""
    spec = app.extensions["openapi"]
    operation = spec["paths"][path]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    validator = Draft202012Validator({**spec, **schema})
    return [error.message for error in validator.iter_errors(body)]


SMS = {"channel": "sms", "direction": "inbound", "email": "anna@example.com"}
VOUCHER = {"email": "anna@example.com", "offer_name": "Summer sale", "discount": 10}


@pytest.mark.parametrize(
    ("path", "body", "accepted"),
    [
        # One bad event gets its own 400 result; the batch itself is answered 200.
        ("/events/batch", {"events": [{"channel": "web"}, "not an event", SMS]}, True),
        ("/events/batch", {"events": []}, False),
        ("/identify", {"phoneNumber": "1" * 21}, False),
        ("/identify", {"phoneNumber": 10**20}, False),
        ("/identify", {"phoneNumber": "(+44) 20-7946.0001"}, True),
        ("/identify", {"phoneNumber": "123\u00a0456"}, True),
        ("/identify", {"phoneNumber": "123\u3000456"}, True),
        # White space, but no space: a tab, a line separator, a zero-width no-break space.
        ("/identify", {"phoneNumber": "123\t456"}, False),
        ("/identify", {"phoneNumber": "123\u2028456"}, False),
        ("/identify", {"phoneNumber": "123\ufeff456"}, False),
        # Trimmed at the ends as Python's strip() trims: a tab yes, U+FEFF no.
        ("/identify", {"phoneNumber": "\t123456\n"}, True),
        ("/identify", {"phoneNumber": "\ufeff123456"}, False),
        ("/identify", {"email": "anna@example.com", "phoneNumber": "\ufeff"}, False),
        ("/identify", {"email": "anna@example.com", "phoneNumber": "  "}, True),
        ("/events", {**SMS, "direction": None}, False),
        ("/events", {"channel": "web", "direction": "inbound", "email": "anna@example.com"}, False),
        ("/events", {**SMS, "durationSeconds": 5}, False),
        ("/events", {**SMS, "channel": "call", "durationSeconds": 5}, True),
        # A withheld number: blank, left out, or a telephony system's marker for it.
        ("/calls/incoming", {"phoneNumber": ""}, True),
        ("/calls/incoming", {}, True),
        ("/calls/incoming", {"phoneNumber": " Anonymous "}, True),
        ("/calls/incoming", {"phoneNumber": "RESTRICTED"}, True),
        ("/calls/incoming", {"phoneNumber": "anonymous caller"}, False),
        ("/calls/incoming", {"phoneNumber": "un\u212anown"}, False),
        ("/calls/incoming", {"phoneNumber": "123", "callId": "  "}, False),
        ("/vouchers/generate", {**VOUCHER, "discount": 12.345}, False),
        ("/vouchers/generate", {**VOUCHER, "offer_name": "   "}, False),
        ("/vouchers/validate", {"code": "K7QM-3XPD-9", "email": "anna@example.com"}, False),
    ],
)
def test_the_document_accepts_what_the_server_accepts(app, client, path, body, accepted):
    if path == "/vouchers/generate":
        body = {**body, "expiry": in_a_month()}
    assert (request_schema_errors(app, path, body) == []) is accepted
    response = client.post(path, json=body)
    assert (response.status_code < 400) is accepted, response.get_json()
    assert_matches_openapi(app, path, "post", response)


@pytest.mark.parametrize("phone", [123456.0, 1.23456e5])
def test_a_whole_phone_number_written_with_a_fraction_is_that_number(app, client, phone):
    response = client.post("/identify", json={"phoneNumber": phone})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["contact"]["phoneNumbers"] == ["123456"]
    assert [c.phoneNumber for c in contacts()] == ["123456"]
    call = client.post("/calls/incoming", json={"phoneNumber": phone, "callId": "pbx-1"})
    assert call.status_code == 201, call.get_json()
    assert call.get_json()["match"] == "one"


@pytest.mark.parametrize("phone", [123456.5, 1e20, -1.0])
def test_a_phone_number_that_is_no_whole_number_is_refused(app, client, phone):
    response = client.post("/identify", json={"phoneNumber": phone})
    assert response.status_code == 400, response.get_json()
    assert set(response.get_json()["error"]["fields"]) == {"phoneNumber"}
    assert_matches_openapi(app, "/identify", "post", response)
    assert contacts() == []


def test_a_call_duration_written_with_a_fraction_is_whole_seconds(app, client):
    body = {"channel": "call", "direction": "inbound", "email": "anna@example.com"}
    response = client.post("/events", json={**body, "durationSeconds": 42.0})
    assert response.status_code == 201, response.get_json()
    assert db.session.scalars(select(Engagement.duration_seconds)).all() == [42]
    db.session.rollback()
    refused = client.post("/events", json={**body, "durationSeconds": 42.5})
    assert refused.status_code == 400
    assert set(refused.get_json()["error"]["fields"]) == {"durationSeconds"}
    assert count(Engagement) == 1


# A lone surrogate sent as raw bytes (UTF-8's encoding of U+D800), or escaped in a
# UTF-16 body where a byte search for "\ud8" finds nothing: json.loads took both.
SURROGATE_BODIES = [
    '{"email": "lorraine@hillvalley.edu", "offer_name": "Summer \ud800", "discount": 10, '
    '"expiry": "2999-01-01T00:00:00Z", "channel": "web", "summary": "Summer \ud800", '
    '"phoneNumber": "123456", "callId": "pbx-\ud800"}'.encode("utf-8", "surrogatepass"),
    '{"email": "lorraine@hillvalley.edu", "offer_name": "Summer \\ud800", "discount": 10, '
    '"expiry": "2999-01-01T00:00:00Z", "channel": "web", "summary": "Summer \\ud800", '
    '"phoneNumber": "123456", "callId": "pbx-\\ud800"}'.encode("utf-16-le"),
]


@pytest.mark.parametrize("body", SURROGATE_BODIES, ids=["raw-utf8", "escaped-utf16"])
@pytest.mark.parametrize(
    "path", ["/vouchers/generate", "/events", "/calls/incoming", "/calls/status"]
)
def test_a_lone_surrogate_however_sent_is_a_400_and_writes_nothing(app, client, path, body):
    response = client.post(path, data=body, content_type="application/json")
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert_matches_openapi(app, path, "post", response)
    assert (contacts(), count(Engagement), count(Voucher)) == ([], 0, 0)


def test_a_lone_surrogate_in_one_event_of_a_batch_stores_none_of_it(app, client):
    fine, bad = (
        json.dumps({"channel": "web", "email": "a@b.co", "summary": s}, ensure_ascii=False)
        for s in ("fine", "bad \ud800")
    )
    body = f'{{"events": [{fine}, {bad}]}}'
    response = client.post(
        "/events/batch",
        data=body.encode("utf-8", "surrogatepass"),
        content_type="application/json",
    )
    assert response.status_code == 400, response.get_json()
    assert (contacts(), count(Engagement)) == ([], 0)


def test_a_utf16_body_without_surrogates_is_still_read(client):
    body = '{"email": "lorraine@hillvalley.edu", "phoneNumber": "123456"}'.encode("utf-16")
    response = client.post("/identify", data=body, content_type="application/json")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["contact"]["emails"] == ["lorraine@hillvalley.edu"]


def test_nesting_at_the_parser_limit_with_a_surrogate_pair_is_never_a_500(client):
    # The check for lone surrogates walked the body recursively, with one level
    # less to spare than json.loads: a body nested just deep enough to parse
    # ran it out of stack. Every depth around the limit is tried.
    answers = set()
    for depth in range(850, 1000):
        deep = "[" * depth + "]" * depth
        body = f'{{"email": "anna@example.com", "note": "\\ud83d\\ude00", "deep": {deep}}}'
        response = client.post("/identify", data=body, content_type="application/json")
        answers.add(response.status_code)
    assert answers == {200, 400}


PHONES = [
    "123456",
    "(+44) 20-7946.0001",
    "123\u00a0456",
    "123\u3000456",
    "\t123456\n",
    "123\t456",
    "123\u2028456",
    "123\ufeff456",
    "\ufeff123456",
    "123456\ufeff",
    "\u2029",
    "\ufeff",
    "  ",
    "1" * 21,
]


def test_the_documents_phone_pattern_read_as_ecmascript_agrees_with_the_server(app):
    # OpenAPI patterns are ECMAScript regular expressions, whose \s (U+FEFF among
    # others) is not Python's; node reads the pattern as a client's validator would.
    spec = app.extensions["openapi"]
    pattern = spec["components"]["schemas"]["PhoneNumber"]["oneOf"][0]["pattern"]
    script = (
        "const [pattern, values] = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(values.map((v) => new RegExp(pattern, 'u').test(v))));"
    )
    done = subprocess.run(
        ["node", "-e", script],
        input=json.dumps([pattern, PHONES]),
        capture_output=True,
        text=True,
        check=True,
    )
    by_document = json.loads(done.stdout)

    def server_accepts(raw: str) -> bool:
        try:
            # Blank is "no phone", which the document's pattern accepts too.
            return not raw.strip() or bool(parse_phone(raw))
        except InvalidValue:
            return False

    assert dict(zip(PHONES, by_document, strict=True)) == {p: server_accepts(p) for p in PHONES}
