"""The vouchers JSON API over the real app, on SQLite and MariaDB: answers and database state."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, update

from tests.builders import contacts, identify
from tests.openapi_check import assert_matches_openapi
from webapp.extensions import db
from webapp.models import AuditEntry, Identifier, utcnow
from webapp.reconcile.service import delete_contact
from webapp.vouchers import service
from webapp.vouchers.models import Offer, Voucher
from webapp.vouchers.rules import iso_utc

LORRAINE = "lorraine@hillvalley.edu"
MCFLY = "mcfly@hillvalley.edu"
BIFF = "biff@hillvalley.edu"
# The voucher API always needs an API key (docs/vouchers.md).
pytestmark = pytest.mark.usefixtures("api_key")

CODE_SHAPE = re.compile(r"[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{4}-[0-9A-HJKMNP-TV-Z]{2}")


def in_days(days: float) -> str:
    """An expiry ``days`` from now, written with a +02:00 offset."""
    moment = utcnow().replace(tzinfo=UTC) + timedelta(days=days)
    return moment.astimezone(timezone(timedelta(hours=2))).isoformat()


def generate(
    client, email=LORRAINE, offer="Summer sale", discount=10, days=30, headers=None, **extra
):
    """POST /vouchers/generate and return the response."""
    body = {"email": email, "offer_name": offer, "discount": discount, "expiry": in_days(days)}
    return client.post("/vouchers/generate", json={**body, **extra}, headers=headers)


def issued_code(client, **kwargs) -> str:
    response = generate(client, **kwargs)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["code"]


def validate(client, code, email=LORRAINE, headers=None, **extra):
    """POST /vouchers/validate and return the response."""
    body = {"code": code, "email": email, **extra}
    return client.post("/vouchers/validate", json=body, headers=headers)


def vouchers() -> list[Voucher]:
    db.session.expire_all()
    rows = list(db.session.scalars(select(Voucher).order_by(Voucher.id)))
    # Detached, so that reading them later opens no transaction in the session.
    for row in rows:
        db.session.expunge(row)
    db.session.rollback()
    return rows


def expire(code: str) -> None:
    """Move a voucher's expiry into the past (time passing, not an API call)."""
    db.session.execute(
        update(Voucher)
        .where(Voucher.code == code.replace("-", ""))
        .values(expires_at=utcnow() - timedelta(minutes=1))
    )
    db.session.commit()


def test_generate_issues_a_readable_code_to_a_new_customer(app, client):
    response = generate(client, discount=12.5)
    assert response.status_code == 201
    body = response.get_json()
    assert set(body) == {"code", "offer_name", "discount", "expiry"}
    assert CODE_SHAPE.fullmatch(body["code"])
    assert (body["offer_name"], body["discount"]) == ("Summer sale", 12.5)
    assert body["expiry"].endswith("+00:00")
    assert_matches_openapi(app, "/vouchers/generate", "post", response)

    (contact,) = contacts()
    assert (contact.email, contact.linkedId, contact.source) == (LORRAINE, None, "voucher")
    (voucher,) = vouchers()
    assert voucher.code == body["code"].replace("-", "")
    assert (voucher.contact_id, voucher.discount, voucher.used_at) == (contact.id, 1250, None)
    assert iso_utc(voucher.expires_at) == body["expiry"]


def test_an_expiry_may_write_t_and_z_in_lower_case_as_rfc_3339_allows(client):
    response = generate(client, expiry="2099-12-31t23:59:59z")
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["expiry"] == "2099-12-31T23:59:59+00:00"


def test_generate_for_a_known_email_reuses_its_customer(client):
    identify(client, MCFLY, "123456")
    identify(client, LORRAINE, "123456")
    issued_code(client, email=LORRAINE)
    assert len(contacts()) == 2
    (voucher,) = vouchers()
    assert voucher.contact_id == 2


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"email": None}, "email"),
        ({"email": "not-an-email"}, "email"),
        ({"offer_name": ""}, "offer_name"),
        ({"offer_name": "x" * 121}, "offer_name"),
        ({"offer_name": "Summer\x00sale"}, "offer_name"),
        ({"offer_name": "\x1b[1mSummer"}, "offer_name"),
        ({"offer_name": "Summer\u202d sale"}, "offer_name"),
        ({"discount": 0}, "discount"),
        ({"discount": 100.5}, "discount"),
        ({"discount": "ten"}, "discount"),
        ({"discount": True}, "discount"),
        ({"expiry": "2020-01-01T00:00:00+00:00"}, "expiry"),
        ({"expiry": "2099-01-01T00:00:00"}, "expiry"),
        ({"expiry": "soon"}, "expiry"),
        ({"once_per_customer": "yes"}, "once_per_customer"),
    ],
)
def test_generate_refuses_bad_fields_and_writes_nothing(app, client, change, field):
    body = {"email": LORRAINE, "offer_name": "Summer", "discount": 10, "expiry": in_days(3)}
    response = client.post("/vouchers/generate", json={**body, **change})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_field"
    assert field in error["fields"]
    assert_matches_openapi(app, "/vouchers/generate", "post", response)
    assert contacts() == []
    assert vouchers() == []
    assert db.session.scalar(select(func.count()).select_from(Offer)) == 0


def test_an_offer_name_with_a_control_character_says_which(client):
    response = generate(client, offer="Summer\x07sale")
    assert response.status_code == 400
    assert response.get_json()["error"]["fields"] == {
        "offer_name": "offer_name must not contain control characters (found U+0007)"
    }
    assert (contacts(), vouchers()) == ([], [])


def test_a_lone_surrogate_is_a_400_not_a_database_error(client):
    body = {"email": LORRAINE, "offer_name": "Summer \ud800", "discount": 10, "expiry": in_days(3)}
    response = client.post("/vouchers/generate", json=body)
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert (contacts(), vouchers()) == ([], [])
    # A pair that spells one character is fine.
    paired = client.post("/vouchers/generate", json={**body, "offer_name": "Summer \U0001f600"})
    assert paired.status_code == 201
    assert paired.get_json()["offer_name"] == "Summer \U0001f600"


@pytest.mark.parametrize(
    ("path", "method"),
    [("/vouchers/generate", "post"), ("/vouchers/validate", "post")],
)
def test_bodies_must_be_json(client, path, method):
    response = client.open(path, method=method, data="code=X", content_type="text/plain")
    assert response.status_code == 415
    assert response.get_json()["error"]["code"] == "unsupported_media_type"


def test_codes_are_unique_and_retried_on_collision(client, monkeypatch):
    first = issued_code(client).replace("-", "")
    draws = iter([first, "K7QM3XPD9R"])
    monkeypatch.setattr(service, "new_code", lambda: next(draws))
    second = issued_code(client, email=MCFLY)
    assert second == "K7QM-3XPD-9R"
    assert [v.code for v in vouchers()] == [first, "K7QM3XPD9R"]


def test_validate_reads_its_body_once_for_the_code_limit_and_the_view(client, monkeypatch):
    import json
    from types import SimpleNamespace

    from webapp.api import payloads

    code = issued_code(client)
    parsed = []
    counting = SimpleNamespace(
        detect_encoding=json.detect_encoding,
        loads=lambda raw: parsed.append(raw) or json.loads(raw),
    )
    monkeypatch.setattr(payloads, "json", counting)
    assert validate(client, code).status_code == 200
    assert len(parsed) == 1


@pytest.mark.parametrize(
    ("code", "email", "status"),
    [(None, LORRAINE, 200), ("not a code", "not an e-mail", 400)],
)
def test_validate_reads_its_email_and_code_once_for_the_limits_and_the_view(
    client, monkeypatch, code, email, status
):
    # The default per-client limit is two limits, each keyed on the e-mail, and the
    # per-code limit reads the code for its exemption and for its key: the e-mail went
    # through email-validator three times a request, the code its normalisation three.
    from webapp.vouchers import api

    code = code or issued_code(client)
    calls: list[str] = []
    for name in ("parse_email", "normalise_code"):
        parse = getattr(api, name)
        monkeypatch.setattr(
            api, name, lambda raw, name=name, parse=parse: calls.append(name) or parse(raw)
        )
    assert validate(client, code, email=email).status_code == status
    assert sorted(calls) == ["normalise_code", "parse_email"]


@pytest.mark.parametrize(
    "spelling",
    [
        lambda c: c,
        str.lower,
        lambda c: c.replace("-", ""),
        lambda c: c.lower().replace("-", " "),
        # As a word processor or an HTML e-mail writes the dashes.
        lambda c: c.replace("-", "\u2013"),
        lambda c: c.replace("-", "\u2011"),
    ],
)
def test_validate_accepts_any_spelling_and_redeems(app, client, spelling):
    code = issued_code(client, discount=15)
    response = validate(client, spelling(code))
    assert response.status_code == 200
    body = response.get_json()
    assert (body["code"], body["discount"], body["offer_name"]) == (code, 15, "Summer sale")
    assert_matches_openapi(app, "/vouchers/validate", "post", response)
    (voucher,) = vouchers()
    assert voucher.used_at is not None
    assert voucher.used_email == LORRAINE
    assert body["used_at"] == iso_utc(voucher.used_at)


def test_look_alike_letters_are_read_as_digits(client, monkeypatch):
    monkeypatch.setattr(service, "new_code", lambda: "A0B1C0D1EF")
    issued_code(client)
    assert validate(client, "aob-icod-lef").status_code == 200


def test_any_email_of_the_customer_redeems_it(client):
    code = issued_code(client, email=LORRAINE)
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    response = validate(client, code, email=MCFLY.upper())
    assert response.status_code == 200
    assert vouchers()[0].used_email == MCFLY.upper()


def test_a_merge_after_issue_moves_the_voucher_with_its_customer(client):
    # Biff's voucher was issued to him alone; merging him into Lorraine's
    # older customer makes it hers too, without touching the voucher.
    identify(client, LORRAINE, "111")
    code = issued_code(client, email=BIFF)
    assert validate(client, code, email=LORRAINE, dry_run=True).status_code == 404
    identify(client, BIFF, "111")
    assert validate(client, code, email=LORRAINE).status_code == 200


def test_a_voucher_outlives_the_deletion_of_its_contact_row_and_a_later_merge(client):
    # Lorraine's voucher sits on her row; an agent deletes that row (McFly's
    # becomes the primary), then a checkout merges the customer into Biff's
    # older one. The voucher stays with the customer throughout.
    identify(client, BIFF, "999")
    code = issued_code(client, email=LORRAINE)
    identify(client, MCFLY, "123456")
    identify(client, LORRAINE, "123456")
    delete_contact(2, "agent@shop.test")
    listed = client.get("/vouchers", query_string={"email": MCFLY}).get_json()["vouchers"]
    assert [v["code"] for v in listed] == [code]
    identify(client, MCFLY, "999")
    listed = client.get("/vouchers", query_string={"email": BIFF}).get_json()["vouchers"]
    assert [v["code"] for v in listed] == [code]
    assert validate(client, code, email=BIFF).status_code == 200


def test_deleting_the_row_that_joined_two_people_leaves_the_voucher_with_its_owner(client):
    # Lorraine's first row is the only link to McFly (a shared phone); she came back
    # with another phone. Deleting that first row splits them: the voucher issued on
    # it stays Lorraine's, not the oldest remaining row's (McFly's).
    identify(client, LORRAINE, "111")
    identify(client, MCFLY, "111")
    identify(client, LORRAINE, "333")
    code = issued_code(client, email=LORRAINE)
    assert vouchers()[0].contact_id == 1
    delete_contact(1, "agent@shop.test")
    mine = client.get("/vouchers", query_string={"email": LORRAINE}).get_json()["vouchers"]
    assert [v["code"] for v in mine] == [code]
    theirs = client.get("/vouchers", query_string={"email": MCFLY}).get_json()["vouchers"]
    assert theirs == []
    assert validate(client, code, email=MCFLY).status_code == 404
    assert validate(client, code, email=LORRAINE).status_code == 200


def test_unknown_code_and_another_customers_code_answer_the_same_404(app, client):
    code = issued_code(client, email=LORRAINE)
    issued_code(client, email=BIFF)
    theirs = validate(client, code, email=BIFF)
    unknown = validate(client, "K7QM-3XPD-9R", email=BIFF)
    stranger = validate(client, code, email="nobody@example.com")
    for response in (theirs, unknown, stranger):
        assert response.status_code == 404
        assert response.get_json() == theirs.get_json()
        assert_matches_openapi(app, "/vouchers/validate", "post", response)
    assert theirs.get_json()["error"]["code"] == "voucher_not_found"
    assert all(v.used_at is None for v in vouchers())
    # The stranger's e-mail was only looked up, not made a customer.
    assert {c.email for c in contacts()} == {LORRAINE, BIFF}


def test_used_voucher_is_409_with_when(app, client):
    code = issued_code(client)
    assert validate(client, code).status_code == 200
    used_at = vouchers()[0].used_at
    again = validate(client, code)
    assert again.status_code == 409
    error = again.get_json()["error"]
    assert error["code"] == "voucher_used"
    assert iso_utc(used_at) in error["message"]
    assert error["fields"]["code"] == error["message"]
    assert_matches_openapi(app, "/vouchers/validate", "post", again)
    assert vouchers()[0].used_at == used_at


def test_expired_voucher_is_410_and_stays_unused(app, client):
    code = issued_code(client)
    expire(code)
    response = validate(client, code)
    assert response.status_code == 410
    assert response.get_json()["error"]["code"] == "voucher_expired"
    assert_matches_openapi(app, "/vouchers/validate", "post", response)
    assert vouchers()[0].used_at is None


def test_dry_run_checks_without_redeeming(app, client):
    code = issued_code(client, discount=20)
    dry = validate(client, code, dry_run=True)
    assert dry.status_code == 200
    assert dry.get_json() == {
        "code": code,
        "offer_name": "Summer sale",
        "discount": 20,
        "used_at": None,
    }
    assert_matches_openapi(app, "/vouchers/validate", "post", dry)
    assert vouchers()[0].used_at is None
    assert validate(client, code).status_code == 200
    assert validate(client, code, dry_run=True).status_code == 409


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": LORRAINE}, "code"),
        ({"code": "K7QM-3XPD", "email": LORRAINE}, "code"),
        ({"code": 12345, "email": LORRAINE}, "code"),
        ({"code": "K7QM-3XPD-9R"}, "email"),
        ({"code": "K7QM-3XPD-9R", "email": "nope"}, "email"),
        ({"code": "K7QM-3XPD-9R", "email": LORRAINE, "dry_run": "no"}, "dry_run"),
    ],
)
def test_validate_refuses_bad_fields(app, client, body, field):
    response = client.post("/vouchers/validate", json=body)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]
    assert_matches_openapi(app, "/vouchers/validate", "post", response)


def test_reissuing_an_offer_changes_only_new_vouchers(client):
    old = issued_code(client, offer="Black Friday", discount=10)
    new = issued_code(client, offer="Black Friday", discount=25)
    offer = db.session.scalars(select(Offer)).one()
    assert offer.discount == 2500
    assert [v.discount for v in vouchers()] == [1000, 2500]
    assert validate(client, old).get_json()["discount"] == 10
    assert validate(client, new).get_json()["discount"] == 25


def test_once_per_customer_holds_across_emails_and_vouchers(client):
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    first = issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    second = issued_code(client, email=MCFLY, offer="Welcome")
    biffs = issued_code(client, email=BIFF, offer="Welcome")
    assert validate(client, first).status_code == 200
    refused = validate(client, second, email=MCFLY)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "offer_already_redeemed"
    assert validate(client, second, email=MCFLY, dry_run=True).status_code == 409
    # Another customer is not affected, and the refused voucher stays unused.
    assert validate(client, biffs, email=BIFF).status_code == 200
    assert [v.used_at is not None for v in vouchers()] == [True, False, True]


def _split_after_one_redeemed_the_others_voucher(client) -> str:
    """Lorraine and McFly, one customer by a shared phone: McFly redeems the once-per-
    customer voucher issued to Lorraine's e-mail, then blocking the phone splits them.
    McFly's own voucher of the offer, which he can no longer redeem."""
    from webapp.identity.rules import parse_identifier
    from webapp.reconcile.service import set_blocked

    identify(client, LORRAINE, "555")
    identify(client, MCFLY, "555")
    hers = issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    his = issued_code(client, email=MCFLY, offer="Welcome")
    assert validate(client, hers, email=MCFLY).status_code == 200
    assert validate(client, his, email=MCFLY, dry_run=True).status_code == 409
    set_blocked(parse_identifier("555"), True, "agent@shop.test", "shop phone")
    return his


def test_once_per_customer_follows_the_one_who_redeemed_across_a_split(client):
    # Once split, McFly has still used the offer.
    his = _split_after_one_redeemed_the_others_voucher(client)
    refused = validate(client, his, email=MCFLY)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "offer_already_redeemed"
    assert vouchers()[1].used_at is None


def test_once_per_customer_counts_a_redemption_made_before_a_merge(client):
    identify(client, LORRAINE, "111")
    mine = issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    biffs = issued_code(client, email=BIFF, offer="Welcome")
    assert validate(client, biffs, email=BIFF).status_code == 200
    identify(client, BIFF, "111")  # Biff turns out to be Lorraine's customer
    assert validate(client, mine).get_json()["error"]["code"] == "offer_already_redeemed"


def test_offer_without_once_per_customer_allows_several(client):
    identify(client, LORRAINE, "111")
    identify(client, MCFLY, "111")
    codes = [issued_code(client, email=e, offer="Loyalty") for e in (LORRAINE, MCFLY, LORRAINE)]
    assert [validate(client, c).status_code for c in codes] == [200, 200, 200]


def test_list_shows_valid_vouchers_across_the_customers_emails(app, client):
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    soon = issued_code(client, email=LORRAINE, offer="A", days=2)
    later = issued_code(client, email=MCFLY, offer="B", days=9)
    used = issued_code(client, email=LORRAINE, offer="C")
    expired = issued_code(client, email=MCFLY, offer="D")
    issued_code(client, email=BIFF, offer="E")
    validate(client, used)
    expire(expired)

    response = client.get("/vouchers", query_string={"email": MCFLY})
    assert response.status_code == 200
    assert_matches_openapi(app, "/vouchers", "get", response)
    listed = response.get_json()["vouchers"]
    assert [(v["code"], v["offer_name"], v["status"]) for v in listed] == [
        (soon, "A", "valid"),
        (later, "B", "valid"),
    ]

    def codes(status):
        answer = client.get("/vouchers", query_string={"email": LORRAINE, "status": status})
        assert answer.status_code == 200
        return [v["code"] for v in answer.get_json()["vouchers"]]

    assert codes("used") == [used]
    assert codes("expired") == [expired]
    assert codes("all") == [soon, later, used, expired]


def listed(client, email, status="valid") -> dict[str, dict]:
    """GET /vouchers for ``email``: {code: listed voucher}, each checked against validate.

    ``redeemable`` must be exactly whether a dry-run validation by this e-mail succeeds.
    """
    response = client.get("/vouchers", query_string={"email": email, "status": status})
    assert response.status_code == 200
    found = {v["code"]: v for v in response.get_json()["vouchers"]}
    for code, voucher in found.items():
        dry_run = validate(client, code, email=email, dry_run=True)
        assert voucher["redeemable"] == (dry_run.status_code == 200), (voucher, dry_run.json)
    return found


def test_list_says_a_voucher_of_a_once_per_customer_offer_already_redeemed_is_not_redeemable(
    app, client
):
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    first = issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    second = issued_code(client, email=MCFLY, offer="Welcome")
    loyalty = issued_code(client, email=MCFLY, offer="Loyalty")
    biffs = issued_code(client, email=BIFF, offer="Welcome")
    assert {v["redeemable"] for v in listed(client, MCFLY).values()} == {True}
    assert validate(client, first).status_code == 200

    response = client.get("/vouchers", query_string={"email": MCFLY})
    assert_matches_openapi(app, "/vouchers", "get", response)
    mine = listed(client, MCFLY)
    # status keeps its meaning: the voucher is still valid, but the offer is used up.
    assert {c: (v["status"], v["redeemable"]) for c, v in mine.items()} == {
        second: ("valid", False),
        loyalty: ("valid", True),
    }
    assert validate(client, second, email=MCFLY).status_code == 409
    assert listed(client, LORRAINE, "used")[first]["redeemable"] is False
    # Another customer's voucher of the offer is not affected.
    assert listed(client, BIFF)[biffs]["redeemable"] is True


def test_a_customer_merged_with_one_who_redeemed_the_offer_lists_it_not_redeemable(client):
    identify(client, LORRAINE, "111")
    mine = issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    other = issued_code(client, email=LORRAINE, offer="Other")
    biffs = issued_code(client, email=BIFF, offer="Welcome")
    assert validate(client, biffs, email=BIFF).status_code == 200
    assert listed(client, LORRAINE)[mine]["redeemable"] is True
    identify(client, BIFF, "111")  # Biff turns out to be Lorraine's customer
    for email in (LORRAINE, BIFF):
        assert {c: v["redeemable"] for c, v in listed(client, email).items()} == {
            mine: False,
            other: True,
        }


def test_one_who_redeemed_anothers_voucher_before_a_split_lists_their_own_not_redeemable(client):
    his = _split_after_one_redeemed_the_others_voucher(client)
    # McFly redeemed the offer with his e-mail (on Lorraine's voucher): his own is barred.
    assert listed(client, MCFLY)[his]["redeemable"] is False


def test_listing_many_vouchers_of_once_per_customer_offers_reads_no_more_than_a_few(client):
    from tests.builders import statements_run

    identify(client, LORRAINE, "111")
    identify(client, MCFLY, "111")
    codes = [
        issued_code(client, email=email, offer=f"Welcome {n}", once_per_customer=True)
        for n in range(12)
        for email in (LORRAINE, MCFLY)
    ]
    # Half the offers redeemed with McFly's e-mail on Lorraine's vouchers, and Biff's few.
    for code in codes[0:12:2]:
        assert validate(client, code, email=MCFLY).status_code == 200
    biffs = [issued_code(client, email=BIFF, offer="Welcome 0") for _ in range(2)]
    assert validate(client, biffs[0], email=BIFF).status_code == 200

    def statements(email):
        with statements_run() as run:
            found = listed_once(client, email)
        return found, len(run)

    many, reads = statements(LORRAINE)
    few, reads_few = statements(BIFF)
    # Valid ones, soonest expiry first: McFly's of the six used offers, then both of the rest.
    assert [v["redeemable"] for v in many] == [False] * 6 + [True] * 12
    assert [v["redeemable"] for v in few] == [False]
    assert reads == reads_few


def listed_once(client, email) -> list[dict]:
    response = client.get("/vouchers", query_string={"email": email})
    assert response.status_code == 200
    return response.get_json()["vouchers"]


@pytest.fixture
def server_east_of_utc(monkeypatch):
    """The process's local time zone is UTC+14 for the test (a box set to local time)."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.usefixtures("server_east_of_utc")
def test_a_voucher_that_expires_at_the_end_of_time_lists_on_a_box_east_of_utc(app, client):
    # Sorting read the naive UTC expiry as local time: in the year 10000, a 500.
    last = issued_code(client, offer="Forever")
    db.session.execute(update(Voucher).values(expires_at=datetime(9999, 12, 31, 23, 59, 59)))
    db.session.commit()
    sooner = issued_code(client, offer="Soon", days=1)
    response = client.get("/vouchers", query_string={"email": LORRAINE})
    assert response.status_code == 200, response.get_json()
    listed = response.get_json()["vouchers"]
    assert [(v["code"], v["expiry"]) for v in listed] == [
        (sooner, listed[0]["expiry"]),
        (last, "9999-12-31T23:59:59+00:00"),
    ]
    assert_matches_openapi(app, "/vouchers", "get", response)


def test_a_list_body_over_64_kib_is_a_413_the_document_names(app, client):
    body = {"email": LORRAINE, "padding": "x" * 70_000}
    response = client.get("/vouchers", json=body)
    assert response.status_code == 413
    assert_matches_openapi(app, "/vouchers", "get", response)


def test_list_reads_a_json_body_on_get_like_the_old_service(client):
    code = issued_code(client)
    response = client.get("/vouchers", json={"email": LORRAINE})
    assert response.status_code == 200
    assert [v["code"] for v in response.get_json()["vouchers"]] == [code]


def test_list_for_an_unknown_email_is_empty_and_creates_nobody(client):
    response = client.get("/vouchers", query_string={"email": "nobody@example.com"})
    assert (response.status_code, response.get_json()) == (200, {"vouchers": []})
    assert contacts() == []


@pytest.mark.parametrize(
    ("query", "field"),
    [({}, "email"), ({"email": "x"}, "email"), ({"email": LORRAINE, "status": "gone"}, "status")],
)
def test_list_refuses_bad_parameters(app, client, query, field):
    response = client.get("/vouchers", query_string=query)
    assert response.status_code == 400
    assert field in response.get_json()["error"]["fields"]
    assert_matches_openapi(app, "/vouchers", "get", response)


def _block(email: str) -> None:
    claim = db.session.scalars(select(Identifier).where(Identifier.key == email)).one()
    claim.blocked_at = utcnow()
    claim.blocked_reason = "shared test address"
    db.session.commit()


def test_a_blocked_email_neither_receives_nor_redeems(app, client):
    code = issued_code(client, email=LORRAINE)
    identify(client, LORRAINE, "555")
    issued_code(client, email=MCFLY)
    _block(MCFLY)
    refused = generate(client, email=MCFLY)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "email_blocked"
    assert_matches_openapi(app, "/vouchers/generate", "post", refused)
    assert len(vouchers()) == 2
    assert validate(client, code, email=MCFLY).status_code == 404
    answer = client.get("/vouchers", query_string={"email": MCFLY})
    assert answer.get_json() == {"vouchers": []}


def test_an_email_blocked_while_its_voucher_is_issued_receives_none(app, client, monkeypatch):
    from webapp.identity.rules import parse_identifier
    from webapp.reconcile.service import set_blocked

    real = service.identify

    def identify_then_block(values, **kwargs):
        customer = real(values, **kwargs)
        # An agent blocks the e-mail after identify looked, before the voucher is written.
        set_blocked(parse_identifier(MCFLY), True, "agent@shop.test", "shared till address")
        return customer

    monkeypatch.setattr(service, "identify", identify_then_block)
    refused = generate(client, email=MCFLY)
    assert refused.status_code == 422
    assert refused.get_json()["error"]["code"] == "email_blocked"
    assert vouchers() == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("get", "/vouchers/generate", 405),
        ("get", "/vouchers/nope", 404),
        ("delete", "/vouchers", 405),
    ],
)
def test_routing_errors_are_json(client, method, path, status):
    response = client.open(path, method=method.upper())
    assert response.status_code == status
    assert set(response.get_json()["error"]) == {"code", "message", "fields"}


def test_api_keys_guard_every_voucher_endpoint(client):
    # The client of this module sends the right key; here it sends none, then a wrong one.
    right = client.environ_base.pop("HTTP_AUTHORIZATION")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        refused = [
            generate(client, headers=headers),
            validate(client, "K7QM-3XPD-9R", headers=headers),
            client.get("/vouchers", query_string={"email": LORRAINE}, headers=headers),
        ]
        assert [r.status_code for r in refused] == [401, 401, 401]
        assert refused[0].headers["WWW-Authenticate"] == 'Bearer realm="identity"'
    assert contacts() == []
    assert generate(client, headers={"Authorization": right}).status_code == 201


@pytest.mark.parametrize("method", ["generate", "validate", "list"])
def test_with_no_api_keys_configured_the_voucher_api_is_closed_and_says_why(app, method):
    app.config["API_KEYS"] = []
    anonymous = app.test_client()
    response = {
        "generate": lambda: generate(anonymous, discount=100),
        "validate": lambda: validate(anonymous, "K7QM-3XPD-9R"),
        "list": lambda: anonymous.get("/vouchers", query_string={"email": LORRAINE}),
    }[method]()
    assert response.status_code == 401
    assert_matches_openapi(app, *OPERATIONS[method], response)
    message = response.get_json()["error"]["message"]
    assert "set API_KEYS on the server" in message
    assert (contacts(), vouchers()) == ([], [])
    # /identify keeps the task's rule: open while no keys are set.
    assert anonymous.post("/identify", json={"email": LORRAINE}).status_code == 200


OPERATIONS = {
    "generate": ("/vouchers/generate", "post"),
    "validate": ("/vouchers/validate", "post"),
    "list": ("/vouchers", "get"),
}


def test_agent_void_is_audited_and_blocks_redemption(client):
    code = issued_code(client)
    (voucher,) = vouchers()
    view = service.void_voucher(voucher.id, "sent to the wrong person", actor="agent@shop.test")
    assert view.status == "voided"
    response = validate(client, code)
    assert response.status_code == 410
    assert response.get_json()["error"]["code"] == "voucher_voided"
    entry = db.session.scalars(select(AuditEntry)).one()
    assert (entry.actor, entry.action, entry.customer_id) == ("agent@shop.test", "void_voucher", 1)
    assert entry.reason == "sent to the wrong person"
    with pytest.raises(service.VoucherError) as refused:
        service.void_voucher(voucher.id, "again", actor="agent@shop.test")
    assert refused.value.code == "voucher_not_voidable"


# --- Idempotency-Key: a retry after a lost answer gets the first answer ------------


def test_generate_sent_again_with_its_idempotency_key_answers_the_first_voucher(app, client):
    key = {"Idempotency-Key": "order-4711-voucher"}
    body = {"email": LORRAINE, "offer_name": "Summer sale", "discount": 10, "expiry": in_days(30)}
    first = client.post("/vouchers/generate", json=body, headers=key)
    assert first.status_code == 201
    assert "Idempotent-Replayed" not in first.headers
    again = client.post("/vouchers/generate", json=body, headers=key)
    assert again.status_code == 200
    assert_matches_openapi(app, "/vouchers/generate", "post", again)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert len(vouchers()) == 1
    # Without the key, or with another, a new voucher as ever.
    assert client.post("/vouchers/generate", json=body).status_code == 201
    assert (
        client.post("/vouchers/generate", json=body, headers={"Idempotency-Key": "x"}).status_code
        == 201
    )
    assert len(vouchers()) == 3


def test_a_retry_after_the_vouchers_expiry_has_passed_still_gets_the_voucher(app, client):
    # Found in the API review: the retry of a voucher valid for minutes, sent after them,
    # was refused "expiry must be in the future" instead of answering the voucher issued.
    key = {"Idempotency-Key": "order-4713-voucher"}
    body = {"email": LORRAINE, "offer_name": "Flash", "discount": 10, "expiry": in_days(1)}
    first = client.post("/vouchers/generate", json=body, headers=key)
    assert first.status_code == 201
    # Time passes: the voucher asked for expired a minute ago.
    expired = utcnow().replace(microsecond=0) - timedelta(minutes=1)
    db.session.execute(update(Voucher).values(expires_at=expired))
    db.session.commit()
    body["expiry"] = iso_utc(expired)
    again = client.post("/vouchers/generate", json=body, headers=key)
    assert again.status_code == 200, again.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json()["code"] == first.get_json()["code"]
    assert_matches_openapi(app, "/vouchers/generate", "post", again)
    # A key never used, or no key, with that expiry issues nothing.
    for headers in ({"Idempotency-Key": "order-4714-voucher"}, {}):
        refused = client.post("/vouchers/generate", json=body, headers=headers)
        assert refused.status_code == 400
        assert refused.get_json()["error"]["fields"] == {"expiry": "expiry must be in the future"}
    assert len(vouchers()) == 1


@pytest.mark.parametrize(
    "changed",
    [{"email": MCFLY}, {"offer_name": "Winter sale"}, {"discount": 15}, {"expiry": "later"}],
)
def test_an_idempotency_key_sent_with_other_values_is_refused(app, client, changed):
    key = {"Idempotency-Key": "order-4711-voucher"}
    body = {"email": LORRAINE, "offer_name": "Summer sale", "discount": 10, "expiry": in_days(30)}
    assert client.post("/vouchers/generate", json=body, headers=key).status_code == 201
    if changed.get("expiry") == "later":
        changed = {"expiry": in_days(31)}
    response = client.post("/vouchers/generate", json={**body, **changed}, headers=key)
    assert response.status_code == 422
    assert_matches_openapi(app, "/vouchers/generate", "post", response)
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert len(vouchers()) == 1


@pytest.mark.parametrize("bad", ["   ", "k" * 201, "caf\u00e9", "a\tb"])
def test_a_malformed_idempotency_key_is_400_and_writes_nothing(app, client, bad):
    response = generate(client, headers={"Idempotency-Key": bad})
    assert response.status_code == 400
    assert_matches_openapi(app, "/vouchers/generate", "post", response)
    assert "Idempotency-Key" in response.get_json()["error"]["fields"]
    assert (vouchers(), contacts()) == ([], [])


def test_a_redemption_sent_again_with_its_key_answers_200_again_and_only_it(app, client):
    code = issued_code(client)
    identify(client, MCFLY, "555")
    identify(client, LORRAINE, "555")  # mcfly@ is now the same customer
    key = {"Idempotency-Key": "order-4712-redeem"}
    first = validate(client, code, headers=key)
    assert first.status_code == 200
    again = validate(client, code, headers=key)
    assert again.status_code == 200
    assert_matches_openapi(app, "/vouchers/validate", "post", again)
    assert (again.get_json(), again.headers["Idempotent-Replayed"]) == (first.get_json(), "true")
    # Any other redemption of the used code is still refused: no key, another key,
    # or the key with another e-mail of the customer.
    assert validate(client, code).status_code == 409
    assert validate(client, code, headers={"Idempotency-Key": "other"}).status_code == 409
    assert validate(client, code, email=MCFLY, headers=key).status_code == 409
    (used,) = vouchers()
    assert (used.used_email, used.redeem_key) == (LORRAINE, "order-4712-redeem")


def test_a_deeply_nested_body_is_a_400_before_and_after_the_rate_limit_reads_it(app, client):
    body = "[" * 100_000 + "]" * 100_000
    for path in ("/vouchers/validate", "/vouchers/generate"):
        response = client.post(path, data=body, content_type="application/json")
        assert response.status_code in (400, 413)
        assert response.get_json()["error"]["code"] in ("invalid_json", "payload_too_large")
    nested = "[" * 5_000 + "]" * 5_000
    response = client.post("/vouchers/validate", data=nested, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_json"
    assert_matches_openapi(app, "/vouchers/validate", "post", response)
