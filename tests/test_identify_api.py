"""POST /identify over the real app, on SQLite and MariaDB: answers and database state."""

import gzip

import pytest
from sqlalchemy import select

from tests.builders import assert_invariants, contacts, identify
from tests.openapi_check import assert_matches_openapi
from webapp.extensions import db
from webapp.identity.search_index import ContactGram, contact_grams
from webapp.models import AuditEntry, Contact, Identifier, Merge, utcnow

LORRAINE = "lorraine@hillvalley.edu"
MCFLY = "mcfly@hillvalley.edu"


def test_task_example_lorraine_and_mcfly(client):
    status, first = identify(client, LORRAINE, "123456")
    assert status == 200
    assert first["contact"] == {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": [LORRAINE],
        "phoneNumbers": ["123456"],
        "secondaryContactIds": [],
    }
    status, body = identify(client, MCFLY, "123456")
    assert status == 200
    expected = {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": [LORRAINE, MCFLY],
        "phoneNumbers": ["123456"],
        "secondaryContactIds": [2],
    }
    assert body["contact"] == expected
    for email, phone in [(None, "123456"), (LORRAINE, None), (MCFLY, None), (MCFLY, "123456")]:
        status, again = identify(client, email, phone)
        assert (status, again["contact"]) == (200, expected)
    status, again = identify(client, phone=123456)
    assert (status, again["contact"]) == (200, expected)
    assert [(c.id, c.linkPrecedence, c.linkedId) for c in contacts()] == [
        (1, "primary", None),
        (2, "secondary", 1),
    ]
    assert_invariants()


@pytest.mark.parametrize("missing", [{}, {"email": None}, {"email": "", "phoneNumber": "  "}])
def test_nothing_to_identify_is_400(client, missing):
    response = client.post("/identify", json=missing)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "missing_identifier"
    assert contacts() == []


def test_task_example_george_and_biff_merge_without_a_new_row(client):
    _, george = identify(client, "george@hillvalley.edu", "919191")
    _, biff = identify(client, "biffsucks@hillvalley.edu", "717171")
    assert george["contact"]["primaryContactId"] != biff["contact"]["primaryContactId"]
    status, body = identify(client, "george@hillvalley.edu", "717171")
    assert status == 200
    assert body["contact"] == {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": ["george@hillvalley.edu", "biffsucks@hillvalley.edu"],
        "phoneNumbers": ["919191", "717171"],
        "secondaryContactIds": [2],
    }
    rows = contacts()
    assert [(c.id, c.linkPrecedence, c.linkedId) for c in rows] == [
        (1, "primary", None),
        (2, "secondary", 1),
    ]
    merges = db.session.scalars(select(Merge)).all()
    assert [(m.survivor_id, m.absorbed_id, m.rows_moved, m.cause) for m in merges] == [
        (1, 2, 1, "checkout")
    ]
    assert_invariants()


def test_matching_ignores_case_spaces_and_phone_punctuation_and_keeps_first_form(client):
    identify(client, "Doc.Brown@HillValley.edu", "+1 (555) 010-9999")
    status, body = identify(client, "  doc.brown@hillvalley.EDU ", "+1.555.010.9999")
    assert status == 200
    assert body["contact"]["emails"] == ["Doc.Brown@HillValley.edu"]
    assert body["contact"]["phoneNumbers"] == ["+1 (555) 010-9999"]
    assert len(contacts()) == 1
    # The + is kept: without it the number is another phone.
    _, other = identify(client, "doc.brown@hillvalley.edu", "15550109999")
    assert other["contact"]["phoneNumbers"] == ["+1 (555) 010-9999", "15550109999"]


def test_an_address_written_with_other_code_points_is_the_same_customer(client):
    # "José" with a combining accent, then precomposed; the domain as punycode, then Unicode.
    identify(client, "Jose\u0301@xn--bcher-kva.de", None)
    status, body = identify(client, "jos\u00e9@B\u00dccher.de", "555 0100")
    assert status == 200
    assert body["contact"]["primaryContactId"] == 1
    assert body["contact"]["emails"] == ["Jose\u0301@xn--bcher-kva.de"]
    assert [c.email_key for c in contacts()] == ["jos\u00e9@b\u00fccher.de"] * 2
    # Search finds it typed either way too.
    from webapp.dashboard.search import search_customers

    for typed in (
        "jose\u0301",
        "jos\u00e9@b\u00fc",
        "jose\u0301@xn--bcher-kva.de",
        "xn--bcher-kva",
    ):
        assert [c.primary_id for c in search_customers(typed).customers] == [1]


def test_absorbed_customers_secondaries_move_straight_to_the_survivor(client):
    identify(client, "a@x.io", "1")  # 1
    identify(client, "b@x.io", "2")  # 2
    identify(client, "b2@x.io", "2")  # 3 -> 2
    identify(client, "c@x.io", "3")  # 4
    identify(client, "c2@x.io", "3")  # 5 -> 4
    status, body = identify(client, "b2@x.io", "3")  # merges 4 into 2
    assert status == 200
    assert body["contact"]["primaryContactId"] == 2
    assert body["contact"]["secondaryContactIds"] == [3, 4, 5]
    status, body = identify(client, "a@x.io", "2")  # merges 2 into 1
    assert body["contact"] == {
        "primaryContactId": 1,
        "primaryContatctId": 1,
        "emails": ["a@x.io", "b@x.io", "b2@x.io", "c@x.io", "c2@x.io"],
        "phoneNumbers": ["1", "2", "3"],
        "secondaryContactIds": [2, 3, 4, 5],
    }
    assert {c.id: c.linkedId for c in contacts()} == {1: None, 2: 1, 3: 1, 4: 1, 5: 1}
    assert_invariants()


def test_deleted_rows_take_no_part(client):
    identify(client, "gone@x.io", "42")
    row = db.session.get(Contact, 1)
    row.deletedAt = utcnow()
    db.session.commit()
    status, body = identify(client, "gone@x.io", None)
    assert status == 200
    assert body["contact"]["primaryContactId"] == 2
    assert body["contact"]["phoneNumbers"] == []
    assert len(contacts()) == 2


def test_unknown_fields_are_ignored(client):
    status, body = identify(client, "a@x.io", "1", name="Marty", extra={"x": [1]})
    assert status == 200
    assert body["contact"]["emails"] == ["a@x.io"]


def test_responses_match_the_openapi_document(app, client):
    response = client.post("/identify", json={"email": "a@x.io", "phoneNumber": 5})
    assert response.status_code == 200
    assert_matches_openapi(app, "/identify", "post", response)
    response = client.post("/identify", json={"email": 5})
    assert response.status_code == 400
    assert_matches_openapi(app, "/identify", "post", response)
    response = client.post("/identify", data="x", content_type="text/plain")
    assert response.status_code == 415
    assert_matches_openapi(app, "/identify", "post", response)
    response = client.get("/healthz")
    assert response.status_code == 200
    assert_matches_openapi(app, "/healthz", "get", response)
    openapi = client.get("/openapi.json")
    assert openapi.status_code == 200
    contact = openapi.get_json()["components"]["schemas"]["Contact"]["properties"]
    assert contact["primaryContatctId"]["deprecated"] is True


BIG = "x" * 70_000


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ('{"email": "a@x.io"', 400, "invalid_json", None),
        ("", 400, "invalid_json", None),
        ("\xff\xfe", 400, "invalid_json", None),
        ("[" * 30_000 + "]" * 30_000, 400, "invalid_json", None),
        ("[]", 400, "invalid_body", None),
        ('"a@x.io"', 400, "invalid_body", None),
        ("null", 400, "invalid_body", None),
        ("42", 400, "invalid_body", None),
        ('{"email": 123}', 400, "invalid_field", "email"),
        ('{"email": true}', 400, "invalid_field", "email"),
        ('{"email": ["a@x.io"]}', 400, "invalid_field", "email"),
        ('{"email": {"a": 1}}', 400, "invalid_field", "email"),
        ('{"email": "not-an-email"}', 400, "invalid_field", "email"),
        ('{"email": "a@x.io\\u0000"}', 400, "invalid_field", "email"),
        ('{"email": "' + "a" * 300 + '@x.io"}', 400, "invalid_field", "email"),
        ('{"phoneNumber": true}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": false}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": 1.5}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": -5}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": [123]}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": {"n": 1}}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": "---"}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": "12\\u00003"}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": "' + "1" * 500 + '"}', 400, "invalid_field", "phoneNumber"),
        ('{"phoneNumber": 123456789012345678901234567890}', 400, "invalid_field", "phoneNumber"),
        # One good value does not carry a bad one: nothing is written.
        ('{"email": "a@x.io", "phoneNumber": "abc"}', 400, "invalid_field", "phoneNumber"),
        ('{"email": "bad", "phoneNumber": "123"}', 400, "invalid_field", "email"),
        ('{"email": "' + BIG + '"}', 413, "payload_too_large", None),
    ],
)
def test_bad_input_is_a_clear_4xx_and_writes_nothing(client, body, status, code, field):
    response = client.post("/identify", data=body, content_type="application/json")
    assert response.status_code == status
    error = response.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field:
        assert field in error["fields"]
    assert contacts() == []
    assert db.session.scalars(select(Identifier)).all() == []


def post_chunked(client, path: str, body: bytes):
    """POST ``body`` as gunicorn hands a chunked request to the app: no length, and
    ``wsgi.input_terminated`` saying the server ends the stream."""
    return client.post(
        path,
        data=body,
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )


LIMIT = 64 * 1024


@pytest.mark.parametrize(
    "body",
    [
        # An object, then padding past the limit: the first 64 KiB alone are valid JSON.
        b'{"email": "a@x.io"}' + b" " * LIMIT + b"not JSON",
        b'{"email": "a@x.io"}'.ljust(LIMIT + 1),
    ],
    ids=["far-past", "one-byte-past"],
)
def test_a_chunked_body_past_the_limit_is_413_and_writes_nothing(client, body):
    response = post_chunked(client, "/identify", body)
    assert response.status_code == 413
    assert response.get_json()["error"]["code"] == "payload_too_large"
    assert contacts() == []


def test_a_chunked_body_up_to_the_limit_is_read_whole(client):
    response = post_chunked(client, "/identify", b'{"email": "a@x.io"}'.ljust(LIMIT))
    assert response.status_code == 200
    assert response.get_json()["contact"]["emails"] == ["a@x.io"]


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None],
)
def test_non_json_content_type_is_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/identify", data='{"email": "a@x.io"}', headers=headers)
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"
    assert contacts() == []


@pytest.mark.parametrize("path", ["/identify", "/events"])
def test_a_compressed_body_is_415_saying_so(client, path):
    # Found by the integrator: a gzip body was "not valid UTF-8 text", which sent the
    # client looking for a bad character rather than at its compression.
    body = gzip.compress(b'{"email": "a@x.io", "channel": "sms"}')
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    response = client.post(path, data=body, headers=headers)
    assert response.status_code == 415
    error = response.get_json()["error"]
    assert error["code"] == "unsupported_media_type"
    assert "Content-Encoding 'gzip'" in error["message"]
    assert response.headers["Accept-Encoding"] == "identity"
    assert contacts() == []
    plain = client.post(path, json={"email": "a@x.io"}, headers={"Content-Encoding": "identity"})
    assert plain.status_code != 415


def test_get_identify_is_405_json(client):
    response = client.get("/identify")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


def test_unknown_api_path_is_json_404(client):
    response = client.get("/identify/extra")
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "not_found"


def test_new_rows_are_indexed_for_search_in_the_same_transaction(client):
    identify(client, "Doc@HillValley.edu", "+1 (555) 010")
    identify(client, "emmett@hillvalley.edu", "+1 (555) 010")
    identify(client, "emmett@hillvalley.edu", None)  # nothing new: nothing indexed
    indexed = {}
    for gram in db.session.scalars(select(ContactGram)):
        indexed.setdefault(gram.contact_id, set()).add(gram.gram)
    assert indexed == {
        1: contact_grams("doc@hillvalley.edu", "+1555010"),
        2: contact_grams("emmett@hillvalley.edu", "+1555010"),
    }


def test_a_merge_moves_the_absorbed_customers_deleted_rows_too(client):
    identify(client, "a@x.io", "1")  # 1
    identify(client, "b@x.io", "2")  # 2
    identify(client, "b2@x.io", "2")  # 3 -> 2
    gone = db.session.get(Contact, 3)
    gone.deletedAt = utcnow()
    db.session.commit()
    status, body = identify(client, "a@x.io", "2")  # absorbs customer 2 into 1
    assert status == 200
    assert body["contact"]["secondaryContactIds"] == [2]
    assert {c.id: (c.linkedId, c.deletedAt is not None) for c in contacts()} == {
        1: (None, False),
        2: (1, False),
        3: (1, True),
    }
    assert_invariants()


def test_a_primary_deleted_by_hand_leaves_its_live_rows_one_customer(client, app):
    """SQL written against the task may soft-delete a primary; identify still answers.

    Deleted rows take no part, so the oldest live row becomes the primary, as
    the dashboard's delete would have left it, and the repair is audited.
    """
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    identify(client, "doc@hillvalley.edu", "123456")
    with app.app_context():
        db.session.execute(
            Contact.__table__.update().where(Contact.id == 1).values(deletedAt=utcnow())
        )
        db.session.commit()
    status, body = identify(client, phone="123456")
    assert status == 200
    assert body["contact"] == {
        "primaryContactId": 2,
        "primaryContatctId": 2,
        "emails": [MCFLY, "doc@hillvalley.edu"],
        "phoneNumbers": ["123456"],
        "secondaryContactIds": [3],
    }
    status, body = identify(client, "einstein@hillvalley.edu", "123456")
    assert (status, body["contact"]["primaryContactId"]) == (200, 2)
    assert body["contact"]["secondaryContactIds"] == [3, 4]
    assert_invariants()
    with app.app_context():
        entries = db.session.scalars(select(AuditEntry.actor)).all()
    assert entries == ["checkout"]
