"""Bugs found by fuzzing the JSON API against its OpenAPI document, on SQLite and MariaDB."""

from __future__ import annotations

from datetime import UTC, timedelta

import pytest
from sqlalchemy import func, select

from tests.builders import contacts
from tests.openapi_check import assert_matches_openapi
from webapp.extensions import db
from webapp.models import utcnow
from webapp.vouchers.models import Offer, Voucher


def count(model) -> int:
    total = db.session.scalar(select(func.count()).select_from(model))
    db.session.rollback()
    return total


def in_a_month() -> str:
    return (utcnow().replace(tzinfo=UTC) + timedelta(days=30)).isoformat()


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
    body = {
        "email": "lorraine@hillvalley.edu",
        "offer_name": "Summer sale",
        "discount": discount,
        "expiry": in_a_month(),
    }
    response = client.post("/vouchers/generate", json=body)
    assert response.status_code == 400, response.get_json()
    assert response.get_json()["error"]["code"] == "invalid_field"
    assert set(response.get_json()["error"]["fields"]) == {"discount"}
    assert_matches_openapi(app, "/vouchers/generate", "post", response)
    assert (count(Voucher), count(Offer), contacts()) == (0, 0, [])


@pytest.mark.parametrize(("discount", "shown"), [("12.50", 12.5), ("1E+2", 100), (0.01, 0.01)])
def test_an_exact_discount_written_any_way_is_issued(client, discount, shown):
    body = {
        "email": "lorraine@hillvalley.edu",
        "offer_name": "Summer sale",
        "discount": discount,
        "expiry": in_a_month(),
    }
    response = client.post("/vouchers/generate", json=body)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["discount"] == shown
