"""POST /events, /events/batch, the lookup and the telephony webhook, on SQLite and MariaDB."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from tests.builders import assert_invariants, contacts, identify
from tests.openapi_check import assert_matches_openapi
from webapp.engagements.models import ContactName, Engagement, ScreenPop
from webapp.extensions import db

# The lookup and the voucher API always need a key; the rest accept it.
pytestmark = pytest.mark.usefixtures("api_key")

ANNA = "anna@example.com"
SMS = {"channel": "sms", "direction": "inbound", "email": ANNA}
CALL = {"channel": "call", "direction": "inbound", "email": ANNA}


def post_event(client, **body):
    response = client.post("/events", json=body)
    return response


def engagements() -> list[Engagement]:
    rows = list(db.session.scalars(select(Engagement).order_by(Engagement.id)))
    db.session.rollback()
    return rows


def count(model) -> int:
    total = db.session.scalar(select(func.count()).select_from(model))
    db.session.rollback()
    return total


def test_event_from_a_new_person_creates_the_customer_and_stores_the_event(app, client):
    response = post_event(
        client,
        channel="sms",
        direction="inbound",
        phoneNumber="+44 20 7946 0001",
        summary="Where is my order?",
        occurredAt="2026-11-20T09:30:00+01:00",
        externalId="sms-1",
    )
    assert response.status_code == 201
    assert_matches_openapi(app, "/events", "post", response)
    event = response.get_json()["event"]
    (contact,) = contacts()
    assert (contact.phoneNumber, contact.source) == ("+44 20 7946 0001", "event")
    assert event == {
        "id": event["id"],
        "contactId": contact.id,
        "customerId": contact.id,
        "duplicate": False,
    }
    (stored,) = engagements()
    assert (stored.id, stored.contact_id, stored.channel, stored.direction) == (
        event["id"],
        contact.id,
        "sms",
        "inbound",
    )
    # The offset is applied: stored as UTC.
    assert stored.occurred_at.isoformat() == "2026-11-20T08:30:00"
    assert stored.summary == "Where is my order?"


def test_known_phone_with_a_new_email_links_them_and_the_event_lands_on_the_new_row(client):
    assert identify(client, phone="555 0101")[0] == 200
    response = post_event(
        client, channel="email", direction="inbound", email=ANNA, phoneNumber="5550101"
    )
    assert response.status_code == 201
    event = response.get_json()["event"]
    first, second = contacts()
    assert (second.email, second.linkedId) == (ANNA, first.id)
    assert (event["contactId"], event["customerId"]) == (second.id, first.id)
    assert_invariants()


def test_repeated_external_id_stores_one_event_and_answers_the_first_id(app, client):
    body = {"channel": "whatsapp", "direction": "inbound", "email": ANNA, "externalId": "wa-9"}
    first = post_event(client, **body)
    again = post_event(client, **body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert_matches_openapi(app, "/events", "post", again)
    assert again.get_json()["event"]["id"] == first.get_json()["event"]["id"]
    assert again.get_json()["event"]["duplicate"] is True
    assert len(engagements()) == 1
    # The same external id on another channel is another event.
    other = post_event(client, **{**body, "channel": "sms"})
    assert other.status_code == 201
    assert len(engagements()) == 2


def test_an_external_id_sent_again_with_another_event_is_refused_not_dropped(app, client):
    # Found in security review: a second message that reused a message id was answered
    # "duplicate" with the first one's ids, and was lost: nothing of it was stored.
    body = {
        "channel": "email",
        "direction": "inbound",
        "email": ANNA,
        "externalId": "msg-1",
        "summary": "Where is my order?",
        "occurredAt": "2026-11-20T09:30:00Z",
    }
    first = post_event(client, **body)
    assert first.status_code == 201
    stored = first.get_json()["event"]
    for change in (
        {"summary": "Please cancel it", "email": "second@example.com"},
        {"summary": None},
        {"direction": "outbound"},
        {"occurredAt": "2026-11-20T09:31:00Z"},
    ):
        response = post_event(client, **{**body, **change})
        assert response.status_code == 422, change
        assert_matches_openapi(app, "/events", "post", response)
        error = response.get_json()["error"]
        assert (error["code"], error["fields"]) == (
            "external_id_reused",
            {"externalId": "already used for another event"},
        )
        # Not the stored event's customer: the request is another event.
        assert str(stored["customerId"]) not in response.get_data(as_text=True)
    assert len(engagements()) == 1
    assert [c.email for c in contacts()] == [ANNA]
    # A retry is the same event, wherever it comes from: identified by another value of the
    # customer, with its time left out (the stored one stands) or written in another zone.
    identify(client, ANNA, "555 0100")
    for retry in (
        {**body, "email": None, "phoneNumber": "+1 555 0100"},
        {key: value for key, value in body.items() if key != "occurredAt"},
        {**body, "occurredAt": "2026-11-20T10:30:00+01:00"},
    ):
        response = post_event(client, **retry)
        assert response.status_code == 200, retry
        assert response.get_json()["event"] == {**stored, "duplicate": True}
    assert len(engagements()) == 1


def test_a_batch_refuses_a_reused_external_id_and_stores_the_rest(app, client):
    stored = {"channel": "sms", "direction": "inbound", "email": ANNA, "externalId": "s-1"}
    assert post_event(client, **{**stored, "summary": "Hi"}).status_code == 201
    events = [
        # Another message under a stored id, then one under an id earlier in this batch.
        {**stored, "summary": "Another message"},
        {**stored, "externalId": "s-2", "summary": "First"},
        {**stored, "externalId": "s-2", "summary": "Second"},
        {**stored, "externalId": "s-2", "summary": "First"},
    ]
    response = client.post("/events/batch", json={"events": events})
    assert_matches_openapi(app, "/events/batch", "post", response)
    results = response.get_json()["results"]
    assert [r["status"] for r in results] == [422, 201, 422, 200]
    assert {results[i]["error"]["code"] for i in (0, 2)} == {"external_id_reused"}
    assert results[3]["event"]["id"] == results[1]["event"]["id"]
    assert response.get_json()["stored"] == 1
    assert sorted(e.summary for e in engagements()) == ["First", "Hi"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"direction": "inbound", "email": ANNA}, "channel"),
        ({"channel": "fax", "direction": "inbound", "email": ANNA}, "channel"),
        ({"channel": "sms", "email": ANNA}, "direction"),
        ({"channel": "sms", "direction": "sideways", "email": ANNA}, "direction"),
        ({"channel": "web", "direction": "inbound", "email": ANNA}, "direction"),
        ({"channel": "sms", "direction": "inbound", "email": "not-an-email"}, "email"),
        ({"channel": "sms", "direction": "inbound", "phoneNumber": "call me"}, "phoneNumber"),
        ({**SMS, "occurredAt": "yesterday"}, "occurredAt"),
        ({**SMS, "occurredAt": "2999-01-01T00:00:00Z"}, "occurredAt"),
        ({**SMS, "occurredAt": "0001-01-01T00:00:00+01:00"}, "occurredAt"),
        ({**SMS, "occurredAt": "0001-01-01T00:00:00Z"}, "occurredAt"),
        ({**SMS, "occurredAt": "1969-12-31T23:59:59Z"}, "occurredAt"),
        ({"channel": "web", "email": ANNA, "url": "http://[::1/page"}, "url"),
        ({"channel": "web", "email": ANNA, "url": "javascript:alert(1)"}, "url"),
        ({"channel": "web", "email": ANNA, "url": "/relative"}, "url"),
        ({**SMS, "durationSeconds": 30}, "durationSeconds"),
        ({**CALL, "durationSeconds": -1}, "durationSeconds"),
        ({**CALL, "durationSeconds": "30"}, "durationSeconds"),
        ({**CALL, "durationSeconds": True}, "durationSeconds"),
        ({**SMS, "name": "x" * 201}, "name"),
        ({**SMS, "externalId": 7}, "externalId"),
        ({"channel": "sms", "direction": "inbound"}, "email"),
    ],
)
def test_invalid_event_is_400_naming_the_field_and_stores_nothing(app, client, body, field):
    response = post_event(client, **body)
    assert response.status_code == 400
    assert_matches_openapi(app, "/events", "post", response)
    assert field in response.get_json()["error"]["fields"]
    assert (contacts(), engagements()) == ([], [])


@pytest.mark.parametrize(
    ("body", "field", "found"),
    [
        ({**SMS, "name": "Anna\x00Berg"}, "name", "U+0000"),
        ({**SMS, "name": "Anna\x07"}, "name", "U+0007"),
        ({**SMS, "name": "\x1b[31mAnna"}, "name", "U+001B"),
        ({**SMS, "name": "Anna\nBerg"}, "name", "U+000A"),
        ({**SMS, "name": "\u202emoc.elpmaxe@anna"}, "name", "U+202E"),
        ({**SMS, "summary": "Where is\x00 my order?"}, "summary", "U+0000"),
        ({**SMS, "externalId": "sms\x071"}, "externalId", "U+0007"),
        ({"channel": "web", "email": ANNA, "url": "https://shop.test/\x1b"}, "url", "U+001B"),
    ],
)
def test_control_characters_in_free_text_are_400_naming_the_field(app, client, body, field, found):
    response = post_event(client, **body)
    assert response.status_code == 400
    assert_matches_openapi(app, "/events", "post", response)
    error = response.get_json()["error"]
    assert error["code"] == "invalid_field"
    assert error["fields"] == {field: f"must not contain control characters (found {found})"}
    assert (contacts(), engagements(), count(ContactName)) == ([], [], 0)


def test_a_summary_keeps_its_lines_and_tabs(client):
    summary = "Where is my order?\r\n\tOrder 42"
    response = post_event(client, **SMS, summary=summary, name="\u05d3\u05e0\u05d4\u200f B")
    assert response.status_code == 201
    (stored,) = engagements()
    assert stored.summary == summary
    (name,) = db.session.scalars(select(ContactName))
    assert name.name == "\u05d3\u05e0\u05d4\u200f B"


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        ("[1]", "application/json", 400),
        ("{", "application/json", 400),
        ("{}", "text/plain", 415),
        # A lone surrogate is valid JSON but no text a database column can hold.
        ('{"channel": "web", "email": "a@b.co", "summary": "\\ud800"}', "application/json", 400),
    ],
)
def test_malformed_bodies_are_clear_json_errors(client, data, content_type, status):
    response = client.post("/events", data=data, content_type=content_type)
    assert response.status_code == status
    assert set(response.get_json()["error"]) == {"code", "message", "fields"}
    assert (contacts(), engagements()) == ([], [])


def test_routing_errors_under_the_engagement_paths_answer_json(client):
    missing = client.get("/events/nope")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"
    wrong_method = client.get("/calls/incoming")
    assert wrong_method.status_code == 405
    assert "POST" in wrong_method.headers["Allow"]
    assert wrong_method.get_json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/events", {"channel": "sms", "direction": "inbound", "email": ANNA}, 201),
        ("post", "/events/batch", {"events": [{"channel": "web", "email": ANNA}]}, 200),
        # Nobody holds ANNA yet: the lookup ran and found no one.
        ("get", "/api/v1/customers/lookup?email=" + ANNA, None, 404),
        ("post", "/calls/incoming", {"phoneNumber": "555"}, 201),
        # No call rang with it: the webhook ran and found none.
        ("post", "/calls/status", {"callId": "c-0", "status": "ended"}, 404),
    ],
)
def test_every_endpoint_wants_the_api_key_when_keys_are_set(
    app, client, method, path, body, status
):
    app.config["API_KEYS"] = ["k-1"]
    denied = getattr(client, method)(path, json=body)
    assert denied.status_code == 401
    assert denied.get_json()["error"]["code"] == "unauthorized"
    assert (contacts(), engagements(), count(ScreenPop)) == ([], [], 0)
    allowed = getattr(client, method)(path, json=body, headers={"Authorization": "Bearer k-1"})
    assert allowed.status_code == status
    if status == 404:
        assert allowed.get_json()["error"]["code"] == "not_found"


def test_batch_answers_each_event_and_one_bad_event_sinks_nothing(app, client):
    events = [
        {"channel": "web", "email": ANNA, "url": "https://shop.example/a", "name": "Anna"},
        {"channel": "web", "email": "broken"},
        {"channel": "web", "email": ANNA, "url": "https://shop.example/b"},
        {"channel": "sms", "direction": "outbound", "phoneNumber": "555 0102", "externalId": "s1"},
        {"channel": "sms", "direction": "outbound", "phoneNumber": "555 0102", "externalId": "s1"},
        "not an object",
    ]
    response = client.post("/events/batch", json={"events": events})
    assert response.status_code == 200
    assert_matches_openapi(app, "/events/batch", "post", response)
    body = response.get_json()
    results = body["results"]
    assert [r["status"] for r in results] == [201, 400, 201, 201, 200, 400]
    assert [r["index"] for r in results] == list(range(6))
    assert "email" in results[1]["error"]["fields"]
    assert results[4]["event"]["id"] == results[3]["event"]["id"]
    assert body["stored"] == 3
    stored = engagements()
    assert [e.url for e in stored if e.channel == "web"] == [
        "https://shop.example/a",
        "https://shop.example/b",
    ]
    assert {e.id for e in stored} == {results[i]["event"]["id"] for i in (0, 2, 3)}
    assert len(contacts()) == 2
    assert [n.name for n in db.session.scalars(select(ContactName))] == ["Anna"]


def test_a_repeat_inside_a_batch_stores_nothing_of_its_own(app, client):
    events = [
        {
            "channel": "sms",
            "direction": "inbound",
            "email": ANNA,
            "externalId": "x1",
            "name": "Anna",
        },
        # The same message again, identified another way and with another name.
        {
            "channel": "sms",
            "direction": "inbound",
            "phoneNumber": "555 0199",
            "externalId": "x1",
            "name": "Mallory",
        },
    ]
    response = client.post("/events/batch", json={"events": events})
    assert response.status_code == 200
    first, second = response.get_json()["results"]
    assert (first["status"], second["status"]) == (201, 200)
    assert second["event"]["id"] == first["event"]["id"]
    assert second["event"]["duplicate"] is True
    assert [(c.email, c.phoneNumber) for c in contacts()] == [(ANNA, None)]
    assert [n.name for n in db.session.scalars(select(ContactName))] == ["Anna"]
    assert len(engagements()) == 1


def test_a_repeat_of_a_stored_event_adds_no_name(client):
    body = {"channel": "sms", "direction": "inbound", "email": ANNA, "externalId": "x2"}
    assert client.post("/events", json={**body, "name": "Anna"}).status_code == 201
    batch = {"events": [{**body, "name": "Mallory"}, {**body, "name": "Mallory"}]}
    response = client.post("/events/batch", json=batch)
    assert [r["status"] for r in response.get_json()["results"]] == [200, 200]
    assert [n.name for n in db.session.scalars(select(ContactName))] == ["Anna"]


def test_a_batch_of_500_page_views_over_64_kib_is_stored_in_full(client):
    events = [
        {
            "channel": "web",
            "email": f"visitor{i % 7}@example.com",
            "url": f"https://shop.example/products/{i}?ref=" + "x" * 150,
            "occurredAt": f"2026-11-20T10:{i // 60 % 60:02d}:{i % 60:02d}Z",
        }
        for i in range(500)
    ]
    response = client.post("/events/batch", json={"events": events})
    assert response.status_code == 200
    assert response.get_json()["stored"] == 500
    assert count(Engagement) == 500
    assert len(contacts()) == 7


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"events": []}, "invalid_field"),
        ({"events": "x"}, "invalid_field"),
        ({}, "invalid_field"),
        ({"events": [{"channel": "web", "email": ANNA}] * 501}, "too_many_events"),
    ],
)
def test_batch_shape_errors_store_nothing(client, body, code):
    response = client.post("/events/batch", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == code
    assert engagements() == []


def test_events_never_move_and_history_follows_merges(app, client):
    a = post_event(client, channel="sms", direction="inbound", phoneNumber="111222")
    b = post_event(client, channel="email", direction="inbound", email=ANNA)
    ids = {a.get_json()["event"]["id"], b.get_json()["event"]["id"]}
    rows_before = {e.id: e.contact_id for e in engagements()}
    # An order bridging the two customers merges them; the events stay where they were.
    assert identify(client, ANNA, "111222")[0] == 200
    assert {e.id: e.contact_id for e in engagements()} == rows_before
    response = client.get("/api/v1/customers/lookup", query_string={"email": ANNA})
    assert response.status_code == 200
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", response)
    card = response.get_json()["customer"]
    assert {e["id"] for e in card["recentEngagements"]} == ids
    assert card["customerId"] == a.get_json()["event"]["customerId"]


def test_lookup_lists_engagements_on_a_since_deleted_contact_marked(app, client):
    from webapp.reconcile.service import delete_contact

    assert identify(client, ANNA, "111")[0] == 200
    old = post_event(client, **{**SMS, "email": "old@example.com", "phoneNumber": "111"})
    old = old.get_json()["event"]
    delete_contact(old["contactId"], "agent@example.com", reason="typo")
    new = post_event(client, **SMS).get_json()["event"]
    response = client.get("/api/v1/customers/lookup", query_string={"phone": "111"})
    assert response.status_code == 200
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", response)
    card = response.get_json()["customer"]
    assert card["contactIds"] == [new["contactId"]]
    assert [(e["id"], e["contactId"], e["contactDeleted"]) for e in card["recentEngagements"]] == [
        (new["id"], new["contactId"], False),
        (old["id"], old["contactId"], True),
    ]
    # The deleted row's own value no longer finds the customer.
    assert client.get("/api/v1/customers/lookup?email=old@example.com").status_code == 404


def test_lookup_cards_say_which_valid_vouchers_the_customer_can_still_redeem(app, client):
    # The card lists the customer's valid vouchers as GET /vouchers does, redeemable too.
    assert identify(client, ANNA, "111")[0] == 200
    assert identify(client, "bob@example.com", "111")[0] == 200

    def generate(email, offer, **extra):
        body = {"email": email, "offer_name": offer, "discount": 10}
        body |= {"expiry": "2099-12-31T23:59:59Z", **extra}
        response = client.post("/vouchers/generate", json=body)
        assert response.status_code == 201, response.get_json()
        return response.get_json()["code"]

    anna_s = generate(ANNA, "Welcome", once_per_customer=True)
    bob_s = generate("bob@example.com", "Welcome")
    loyalty = generate(ANNA, "Loyalty")
    used = client.post("/vouchers/validate", json={"code": anna_s, "email": ANNA})
    assert used.status_code == 200
    response = client.get("/api/v1/customers/lookup", query_string={"phone": "111"})
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", response)
    card = response.get_json()["customer"]
    assert {v["code"]: v["redeemable"] for v in card["vouchers"]} == {bob_s: False, loyalty: True}
    listed = client.get("/vouchers", query_string={"email": ANNA}).get_json()["vouchers"]
    assert listed == card["vouchers"]


def test_first_event_name_is_the_display_name(client):
    post_event(client, channel="sms", direction="inbound", phoneNumber="777", name="Anna Berg")
    post_event(client, channel="sms", direction="inbound", phoneNumber="777", name="A. Berg")
    post_event(client, channel="sms", direction="inbound", phoneNumber="777", name="anna berg")
    card = client.get("/api/v1/customers/lookup?phone=777").get_json()["customer"]
    assert card["name"] == "Anna Berg"
    names = [n.name for n in db.session.scalars(select(ContactName).order_by(ContactName.id))]
    # Spellings that differ only in case are kept once.
    assert names == ["Anna Berg", "A. Berg"]


def test_a_longest_name_that_lower_casing_lengthens_is_stored(client):
    # "İ".lower() is two characters: the search key must still fit its column on MariaDB.
    name = "\u0130" * 200
    response = post_event(client, channel="sms", direction="inbound", phoneNumber="777", name=name)
    assert response.status_code == 201
    (stored,) = db.session.scalars(select(ContactName))
    assert (stored.name, len(stored.name_key)) == (name, 200)
    card = client.get("/api/v1/customers/lookup?phone=777").get_json()["customer"]
    assert card["name"] == name


def test_lookup_finds_a_phone_in_any_formatting_with_engagements_newest_first(app, client):
    for minute in (1, 3, 2):
        post_event(
            client,
            channel="call",
            direction="inbound",
            phoneNumber="+49 30 1234567",
            occurredAt=f"2026-11-20T10:0{minute}:00Z",
            durationSeconds=60 * minute,
        )
    response = client.get(
        "/api/v1/customers/lookup", query_string={"phone": "0049 (30) 123-4567", "limit": 2}
    )
    assert response.status_code == 200
    body = response.get_json()
    assert body["match"] == "one"
    assert body["customer"]["phoneNumbers"] == ["+49 30 1234567"]
    assert [e["durationSeconds"] for e in body["customer"]["recentEngagements"]] == [180, 120]
    assert body["customer"]["recentEngagements"][0]["occurredAt"] == "2026-11-20T10:03:00Z"


def test_lookup_lists_every_customer_a_number_matches_and_picks_none(app, client):
    # Two spellings of one number that the identity rules keep apart.
    assert identify(client, "one@example.com", "+4930555")[0] == 200
    assert identify(client, "two@example.com", "004930555")[0] == 200
    response = client.get("/api/v1/customers/lookup?phone=4930555")
    assert response.status_code == 200
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", response)
    body = response.get_json()
    assert body["match"] == "several"
    assert body["customer"] is None
    assert sorted(c["emails"][0] for c in body["customers"]) == [
        "one@example.com",
        "two@example.com",
    ]


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("?phone=1&email=a@b.co", 400),
        ("?phone=", 400),
        ("?phone=abc", 400),
        ("?email=nobody@example.com", 404),
        ("?email=a@b.co&limit=0", 400),
        ("?email=a@b.co&limit=x", 400),
        ("?email=a@b.co&limit=%C2%B2", 400),
        # Past Python's int() limit of 4,300 digits.
        ("?email=a@b.co&limit=" + "9" * 5000, 400),
    ],
)
def test_lookup_errors_are_json(app, client, query, status):
    response = client.get("/api/v1/customers/lookup" + query)
    assert response.status_code == status
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", response)


def test_incoming_call_from_a_known_caller_records_the_call_and_a_pop(app, client):
    assert identify(client, ANNA, "+1 555 0100")[0] == 200
    response = client.post("/calls/incoming", json={"phoneNumber": "15550100", "callId": "c-1"})
    assert response.status_code == 201
    assert_matches_openapi(app, "/calls/incoming", "post", response)
    body = response.get_json()
    (contact,) = contacts()
    assert (body["match"], body["customerIds"]) == ("one", [contact.id])
    (call,) = engagements()
    assert (call.id, call.channel, call.direction, call.external_id, call.contact_id) == (
        body["eventId"],
        "call",
        "inbound",
        "c-1",
        contact.id,
    )
    pop = db.session.get(ScreenPop, body["popId"])
    assert (pop.phone_key, pop.engagement_id) == ("15550100", call.id)
    # The telephony system retries the webhook: one event, one pop.
    again = client.post("/calls/incoming", json={"phoneNumber": "15550100", "callId": "c-1"})
    assert again.status_code == 201
    assert (again.get_json()["popId"], again.get_json()["eventId"]) == (pop.id, call.id)
    assert (count(Engagement), count(ScreenPop)) == (1, 1)


def test_a_call_id_sent_again_with_another_number_is_refused_and_stores_nothing(app, client):
    identify(client, ANNA, "+44 20 7946 0001")
    identify(client, "bob@example.com", "+1 555 0100")
    first = client.post("/calls/incoming", json={"phoneNumber": "+44 20 7946 0001", "callId": "p1"})
    assert first.status_code == 201
    # A retry may spell the number another way; it is still the same call.
    again = client.post("/calls/incoming", json={"phoneNumber": "00442079460001", "callId": "p1"})
    assert again.get_json()["popId"] == first.get_json()["popId"]
    for number in ("+1 555 0100", "+1 555 0199"):  # a known and an unknown caller
        reused = client.post("/calls/incoming", json={"phoneNumber": number, "callId": "p1"})
        assert reused.status_code == 422
        assert reused.get_json()["error"]["code"] == "call_id_reused"
        assert_matches_openapi(app, "/calls/incoming", "post", reused)
    # Bob's call was not answered with Anna's event, nor filed under her number's pop.
    assert (count(Engagement), count(ScreenPop)) == (1, 1)


def test_a_calls_details_posted_under_its_call_id_are_another_event(client):
    identify(client, ANNA, "+1 555 0100")
    ring = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0100", "callId": "c-8"})
    call = {"channel": "call", "direction": "inbound", "phoneNumber": "+1 555 0100"}
    # The same call again, as the webhook filed it: a duplicate.
    same = post_event(client, **call, externalId="c-8")
    assert (same.status_code, same.get_json()["event"]["id"]) == (200, ring.get_json()["eventId"])
    # Its summary and duration are news: refused under the call id, stored under their own.
    details = {**call, "summary": "Asked about a refund", "durationSeconds": 300}
    refused = post_event(client, **details, externalId="c-8")
    assert refused.get_json()["error"]["code"] == "external_id_reused"
    assert post_event(client, **details, externalId="c-8-details").status_code == 201
    assert count(Engagement) == 2


def test_a_retried_call_is_filed_once_its_caller_is_known(client):
    first = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0100", "callId": "c-7"})
    assert first.get_json()["eventId"] is None
    identify(client, ANNA, "+1 555 0100")
    again = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0100", "callId": "c-7"})
    body = again.get_json()
    (call,) = engagements()
    assert (body["popId"], body["eventId"]) == (first.get_json()["popId"], call.id)
    assert db.session.get(ScreenPop, body["popId"]).engagement_id == call.id


def test_a_retried_call_is_filed_at_the_time_it_rang_not_at_the_retry(client):
    first = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0100", "callId": "c-8"})
    pop_id = first.get_json()["popId"]
    # The phone system gives up waiting and sends the webhook again ten minutes on,
    # once the caller has become a customer.
    rang_at = db.session.get(ScreenPop, pop_id).created_at - timedelta(minutes=10)
    db.session.execute(update(ScreenPop).where(ScreenPop.id == pop_id).values(created_at=rang_at))
    db.session.commit()
    identify(client, ANNA, "+1 555 0100")
    again = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0100", "callId": "c-8"})
    (call,) = engagements()
    assert again.get_json()["eventId"] == call.id
    assert call.occurred_at == rang_at


def test_incoming_call_from_an_unknown_number_creates_no_customer(client):
    response = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0199"})
    assert response.status_code == 201
    body = response.get_json()
    assert (body["match"], body["eventId"], body["customerIds"]) == ("none", None, [])
    assert body["blocked"] is False
    assert contacts() == []
    assert count(ScreenPop) == 1


@pytest.mark.parametrize("dialled", ["+44 20 7946 0001", "0044 20 7946 0001", "442079460001"])
def test_a_call_from_a_blocked_number_names_no_one_and_records_nothing(app, client, dialled):
    from webapp.identity.rules import parse_phone
    from webapp.reconcile.service import set_blocked

    # The shop's switchboard: every customer who ordered by phone holds it.
    assert identify(client, ANNA, "+44 20 7946 0001")[0] == 200
    assert identify(client, "bob@example.com", "+44 20 7946 0001")[0] == 200
    set_blocked(parse_phone("+44 20 7946 0001"), True, "agent@example.com", "switchboard")
    response = client.post("/calls/incoming", json={"phoneNumber": dialled, "callId": "c-9"})
    assert response.status_code == 201
    assert_matches_openapi(app, "/calls/incoming", "post", response)
    body = response.get_json()
    assert (body["match"], body["customerIds"], body["eventId"], body["blocked"]) == (
        "none",
        [],
        None,
        True,
    )
    assert (count(Engagement), count(ScreenPop)) == (0, 1)
    lookup = client.get("/api/v1/customers/lookup", query_string={"phone": dialled})
    assert lookup.status_code == 404
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", lookup)
    assert lookup.get_json()["error"]["code"] == "blocked_identifier"
    # The customers are still found by their own values.
    found = client.get("/api/v1/customers/lookup", query_string={"email": ANNA})
    assert found.get_json()["match"] == "one"


WITHHELD_NUMBERS = [
    {"phoneNumber": "anonymous"},
    {"phoneNumber": "Anonymous"},
    {"phoneNumber": " ANONYMOUS "},
    {"phoneNumber": "restricted"},
    {"phoneNumber": "private"},
    {"phoneNumber": "unavailable"},
    {"phoneNumber": "unknown"},
    {"phoneNumber": "withheld"},
    {"phoneNumber": ""},
    {"phoneNumber": "   "},
    {"phoneNumber": None},
    {},
]


@pytest.mark.parametrize("number", WITHHELD_NUMBERS)
def test_a_call_from_a_withheld_number_pops_up_and_names_no_one(app, client, number):
    # The customers the checkout knows: a withheld call is filed under none of them.
    identify(client, ANNA, "+1 555 0100")
    identify(client, "bob@example.com", "5550101")
    before = contacts()
    response = client.post("/calls/incoming", json={**number, "callId": "pbx-anon"})
    assert response.status_code == 201, response.get_json()
    assert_matches_openapi(app, "/calls/incoming", "post", response)
    body = response.get_json()
    assert body == {
        "popId": body["popId"],
        "eventId": None,
        "match": "withheld",
        "customerIds": [],
        "blocked": False,
    }
    pop = db.session.get(ScreenPop, body["popId"])
    assert (pop.phone_number, pop.phone_key, pop.call_id, pop.engagement_id) == (
        "",
        "",
        "pbx-anon",
        None,
    )
    db.session.rollback()
    assert count(Engagement) == 0
    assert [(c.id, c.phoneNumber) for c in contacts()] == [(c.id, c.phoneNumber) for c in before]


def test_a_withheld_calls_retry_pops_once_and_its_call_id_is_kept_for_it(app, client):
    first = client.post("/calls/incoming", json={"phoneNumber": "anonymous", "callId": "w-1"})
    # Retried, written another way the same system might send it.
    again = client.post("/calls/incoming", json={"callId": "w-1"})
    assert again.status_code == 201
    assert again.get_json()["popId"] == first.get_json()["popId"]
    assert count(ScreenPop) == 1
    numbered = client.post("/calls/incoming", json={"phoneNumber": "+1 555 0100", "callId": "n-1"})
    # A call id sent once withheld and once with a number is two calls, not a retry.
    for body in ({"phoneNumber": "+1 555 0100", "callId": "w-1"}, {"callId": "n-1"}):
        reused = client.post("/calls/incoming", json=body)
        assert reused.status_code == 422, body
        assert reused.get_json()["error"]["code"] == "call_id_reused"
        assert_matches_openapi(app, "/calls/incoming", "post", reused)
    assert numbered.get_json()["match"] == "none"
    assert (count(ScreenPop), count(Engagement), contacts()) == (2, 0, [])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"phoneNumber": "nope"}, "phoneNumber"),
        # Not one of the withheld markers: a typo or a name is still refused.
        ({"phoneNumber": "anonymous caller"}, "phoneNumber"),
        ({"phoneNumber": "unknwon"}, "phoneNumber"),
        ({"phoneNumber": "n/a"}, "phoneNumber"),
        ({"phoneNumber": ["anonymous"]}, "phoneNumber"),
        ({"phoneNumber": False}, "phoneNumber"),
        ({"callId": "call\x001"}, "callId"),
        ({"phoneNumber": "555", "callId": ""}, "callId"),
        ({"phoneNumber": "555", "callId": 12}, "callId"),
        ({"phoneNumber": "555", "callId": "call\x001"}, "callId"),
    ],
)
def test_incoming_call_validation(app, client, body, field):
    response = client.post("/calls/incoming", json=body)
    assert response.status_code == 400
    assert_matches_openapi(app, "/calls/incoming", "post", response)
    assert field in response.get_json()["error"]["fields"]
    assert count(ScreenPop) == 0


def test_an_event_whose_only_identifier_is_blocked_is_422_and_others_in_the_batch_land(client):
    from webapp.identity.rules import parse_email
    from webapp.reconcile.service import set_blocked

    assert identify(client, "test@test.com", "5550123")[0] == 200
    set_blocked(parse_email("test@test.com"), True, "agent@example.com", "shared test address")
    single = post_event(client, channel="email", direction="inbound", email="test@test.com")
    assert single.status_code == 422
    assert single.get_json()["error"]["code"] == "blocked_identifier"
    batch = client.post(
        "/events/batch",
        json={
            "events": [
                {"channel": "web", "email": "test@test.com"},
                {"channel": "web", "email": "test@test.com", "phoneNumber": "5550123"},
            ]
        },
    )
    first, second = batch.get_json()["results"]
    assert (first["status"], first["error"]["code"]) == (422, "blocked_identifier")
    # With a usable phone, the event lands on the row holding the phone.
    assert second["status"] == 201
    (stored,) = engagements()
    assert stored.contact_id == contacts()[0].id


def test_a_block_that_splits_a_customer_splits_its_history_with_it(client):
    from webapp.identity.rules import parse_phone
    from webapp.reconcile.service import set_blocked

    mine = post_event(
        client, channel="sms", direction="inbound", email=ANNA, phoneNumber="5550000"
    ).get_json()["event"]
    theirs = post_event(
        client, channel="email", direction="inbound", email="bob@example.com", phoneNumber="5550000"
    ).get_json()["event"]
    # Joined through the shop's own number, which both typed in.
    assert mine["customerId"] == theirs["customerId"]
    set_blocked(parse_phone("5550000"), True, "agent@example.com", "the shop's own number")

    anna = client.get(f"/api/v1/customers/lookup?email={ANNA}").get_json()["customer"]
    bob = client.get("/api/v1/customers/lookup?email=bob@example.com").get_json()["customer"]
    assert anna["customerId"] != bob["customerId"]
    assert [e["id"] for e in anna["recentEngagements"]] == [mine["id"]]
    assert [e["id"] for e in bob["recentEngagements"]] == [theirs["id"]]


def test_with_no_api_keys_configured_events_and_calls_are_open_and_the_lookup_closed(app):
    app.config["API_KEYS"] = []
    anonymous = app.test_client()
    assert anonymous.post("/events", json=SMS).status_code == 201
    assert anonymous.post("/calls/incoming", json={"phoneNumber": "555 0102"}).status_code == 201
    # The lookup lists a customer's vouchers: it never answers without a key.
    refused = anonymous.get("/api/v1/customers/lookup", query_string={"email": ANNA})
    assert refused.status_code == 401
    assert_matches_openapi(app, "/api/v1/customers/lookup", "get", refused)
    assert "set API_KEYS on the server" in refused.get_json()["error"]["message"]


@pytest.mark.parametrize("written", ["2026-11-20t08:30:00z", "2026-11-20T08:30:00Z"])
def test_rfc_3339_times_may_write_t_and_z_in_lower_case(client, written):
    response = post_event(
        client, channel="sms", direction="inbound", email=ANNA, occurredAt=written
    )
    assert response.status_code == 201, response.get_json()
    (stored,) = engagements()
    assert stored.occurred_at.isoformat() == "2026-11-20T08:30:00"


def test_a_batch_past_its_time_budget_answers_the_rest_busy_to_be_sent_again(app, client):
    # Found by the integrator: 500 events of 500 new customers took 11 s on a busy MariaDB,
    # with nothing to stop a slower database from passing gunicorn's 30 s timeout (a 500,
    # and no way to tell which events were stored). With no time at all, the first
    # customer's events are still stored, so a batch always makes progress.
    app.config["EVENTS_BATCH_TIME_BUDGET_S"] = 0
    events = [
        {"channel": "web", "email": f"v{i}@example.com", "url": "https://s.io/"} for i in range(3)
    ]
    results = client.post("/events/batch", json={"events": events}).get_json()["results"]
    assert [r["status"] for r in results] == [201, 503, 503]
    assert {r["error"]["code"] for r in results[1:]} == {"busy"}
    assert "ran out of time" in results[1]["error"]["message"]
    assert len(engagements()) == 1
    app.config["EVENTS_BATCH_TIME_BUDGET_S"] = 20
    again = client.post("/events/batch", json={"events": events[1:]}).get_json()["results"]
    assert [r["status"] for r in again] == [201, 201]
    assert len(engagements()) == 3
