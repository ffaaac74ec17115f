"""A value the database refuses (too long, out of range, text it cannot hold) is bad input:
a 4xx that says sending it again will not help, never a 503 "try again".

Every field is checked before it reaches the database, so no request can make the
database refuse a value on a schema the migrations built. These tests narrow a column
by hand (MariaDB enforces lengths; SQLite does not), so that a value the checks let
through is refused, as it would be where a check is missing.
"""

from __future__ import annotations

import pytest
from flask_migrate import upgrade
from sqlalchemy import func, select

from tests.builders import make_agent, sign_in
from tests.openapi_check import assert_matches_openapi
from webapp import create_app
from webapp.engagements.models import ContactName, Engagement
from webapp.extensions import db
from webapp.vouchers.models import Offer

KEY = "unstorable-values-test-key"
# Fits the API's 200 characters, not the column narrowed to 8.
LONG_NAME = "Lorraine Baines McFly"


@pytest.fixture
def narrow_names(empty_database_url):
    """The app on a database of its own where names (of customers and of offers) hold 8
    characters."""
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": empty_database_url, "TESTING": True, "API_KEYS": [KEY]}
    )
    with app.app_context():
        upgrade()
        with db.engine.begin() as conn:
            for table in ("contact_name", "voucher_offer"):
                conn.exec_driver_sql(f"ALTER TABLE {table} MODIFY name VARCHAR(8) NOT NULL")
        yield app
        db.session.remove()
        db.engine.dispose()


def count(model) -> int:
    total = db.session.scalar(select(func.count()).select_from(model))
    db.session.rollback()
    return total


def event(email: str, name: str) -> dict:
    return {"channel": "sms", "direction": "inbound", "email": email, "name": name}


@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_refused_value_is_a_400_not_a_503_to_retry(narrow_names, caplog):
    client = narrow_names.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {KEY}"
    response = client.post("/events", json=event("anna@example.com", LONG_NAME))
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "unstorable_value"
    assert "will not help" in response.get_json()["error"]["message"]
    assert "Retry-After" not in response.headers
    assert_matches_openapi(narrow_names, "/events", "post", response)
    assert (count(Engagement), count(ContactName)) == (0, 0)
    # Logged as the missing check it is, without the value.
    assert "the database refused a value of events: DataError 1406" in caplog.text
    assert LONG_NAME not in caplog.text
    # The same event with a name that fits is stored.
    assert client.post("/events", json=event("anna@example.com", "Anna")).status_code == 201


@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_refused_value_of_the_voucher_api_is_a_400_too(narrow_names, caplog):
    client = narrow_names.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {KEY}"
    body = {
        "email": "anna@example.com",
        "offer_name": "Summer sale",
        "discount": 10,
        "expiry": "2099-01-01T00:00:00Z",
    }
    response = client.post("/vouchers/generate", json=body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "unstorable_value"
    assert "Retry-After" not in response.headers
    assert_matches_openapi(narrow_names, "/vouchers/generate", "post", response)
    assert "the database refused a value on POST /vouchers/generate: DataError 1406" in (
        caplog.text
    )
    assert count(Offer) == 0


@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_refused_value_in_a_batch_fails_its_own_events_only(narrow_names):
    client = narrow_names.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {KEY}"
    # The first customer's events are refused before anything is stored: the whole
    # batch answered 503, to be sent again, and would fail the same way every time.
    events = [event("anna@example.com", LONG_NAME), event("ben@example.com", "Ben")]
    response = client.post("/events/batch", json={"events": events})
    assert response.status_code == 200, response.get_json()
    results = response.get_json()["results"]
    assert [r["status"] for r in results] == [400, 201]
    assert results[0]["error"]["code"] == "unstorable_value"
    assert response.get_json()["stored"] == 1
    assert_matches_openapi(narrow_names, "/events/batch", "post", response)
    assert count(Engagement) == 1


@pytest.mark.parametrize("dialect", ["mariadb"], indirect=True)
def test_a_refused_value_on_the_dashboard_is_a_422_page_not_the_database_down(narrow_names):
    client = narrow_names.test_client()
    headers = {"Authorization": f"Bearer {KEY}"}
    assert client.post("/identify", json={"email": "anna@example.com"}, headers=headers).json == {
        "contact": {
            "primaryContactId": 1,
            "primaryContatctId": 1,
            "emails": ["anna@example.com"],
            "phoneNumbers": [],
            "secondaryContactIds": [],
        }
    }
    make_agent()
    sign_in(client)
    response = client.post("/customers/1/name", data={"name": LONG_NAME})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert "cannot be stored" in page
    assert "did not answer" not in page
    assert "Retry-After" not in response.headers
    assert count(ContactName) == 0
