"""The dashboard's voucher section and offers page, on SQLite and MariaDB: pages, forms."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select, text

from tests.builders import AGENT_EMAIL, database_work, identify, is_fragment, statements_run
from tests.test_vouchers_api import BIFF, LORRAINE, MCFLY, expire, issued_code, validate, vouchers
from webapp.extensions import db
from webapp.models import AuditEntry, Contact, utcnow
from webapp.vouchers.models import Offer, Voucher
from webapp.vouchers.service import OFFERS_PAGE_SIZE, customer_vouchers, vouchers_of_customers

# These tests issue vouchers through the API, which always needs a key.
pytestmark = pytest.mark.usefixtures("api_key")

HTMX = {"HX-Request": "true"}


def tomorrow() -> str:
    return (utcnow() + timedelta(days=1)).date().isoformat()


def audit_entries() -> list[AuditEntry]:
    db.session.expire_all()
    entries = list(db.session.scalars(select(AuditEntry).order_by(AuditEntry.id)))
    db.session.rollback()
    return entries


@pytest.mark.parametrize(
    ("method", "url"),
    [
        ("get", "/offers"),
        ("get", "/customers/1/vouchers"),
        ("post", "/customers/1/vouchers"),
        ("post", "/customers/1/vouchers/1/void"),
        ("post", "/offers/1/redeemable"),
    ],
)
def test_voucher_pages_need_sign_in(client, method, url):
    identify(client, LORRAINE)
    response = client.open(url, method=method.upper())
    assert response.status_code in (302, 400)
    if response.status_code == 302:
        assert "/sign-in" in response.headers["Location"]
    assert vouchers() == []


def test_customer_page_lists_valid_then_used_then_expired(signed_in_client):
    client = signed_in_client
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    used = issued_code(client, email=LORRAINE, offer="Used one")
    expired = issued_code(client, email=MCFLY, offer="Expired one")
    valid = issued_code(client, email=MCFLY, offer="Valid one")
    biffs = issued_code(client, email=BIFF, offer="Not hers")
    validate(client, used)
    expire(expired)

    page = client.get("/customers/2")  # a secondary's id redirects to the primary
    assert page.status_code == 302
    html = client.get("/customers/1").get_data(as_text=True)
    assert 'id="vouchers"' in html
    positions = [html.index(code) for code in (valid, used, expired)]
    assert positions == sorted(positions)
    assert biffs not in html
    assert f"by {LORRAINE}" in html


def test_section_is_a_fragment_for_htmx_and_a_page_cold(signed_in_client):
    client = signed_in_client
    identify(client, LORRAINE)
    code = issued_code(client)
    fragment = client.get("/customers/1/vouchers", headers=HTMX)
    assert fragment.status_code == 200
    assert is_fragment(fragment, "vouchers")
    assert code in fragment.get_data(as_text=True)
    page = client.get("/customers/1/vouchers")
    html = page.get_data(as_text=True)
    assert "<html" in html and code in html and "HX-Request" in page.vary


def test_agent_issues_a_voucher_with_htmx(signed_in_client):
    client = signed_in_client
    identify(client, LORRAINE)
    body = {"offer_name": "Apology", "discount": "12.5", "valid_until": tomorrow()}
    response = client.post("/customers/1/vouchers", data=body, headers=HTMX)
    assert response.status_code == 200
    assert is_fragment(response, "vouchers")
    assert response.headers["HX-Trigger"] == "voucher-issued"
    (voucher,) = vouchers()
    assert (voucher.contact_id, voucher.discount, voucher.issued_by) == (
        1,
        1250,
        AGENT_EMAIL,
    )
    assert voucher.expires_at.date().isoformat() == tomorrow()
    html = response.get_data(as_text=True)
    assert "Apology" in html and "12.5%" in html
    (entry,) = audit_entries()
    assert (entry.action, entry.customer_id, entry.actor) == (
        "issue_voucher",
        1,
        AGENT_EMAIL,
    )
    # The audit page shows the discount as agents typed it, not as stored (1250).
    assert json.loads(entry.after)["discount"] == 12.5
    assert "<li>discount: 12.5%</li>" in client.get("/audit").get_data(as_text=True)
    # The customer can redeem it with any of its e-mails.
    assert validate(client, html.split('class="voucher-code">')[1][:12]).status_code == 200


def test_issue_without_javascript_redirects_back_to_the_customer(signed_in_client):
    client = signed_in_client
    identify(client, LORRAINE)
    body = {"offer_name": "Apology", "discount": "10", "valid_until": tomorrow()}
    response = client.post("/customers/1/vouchers", data=body)
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/customers/1#vouchers")
    assert len(vouchers()) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"offer_name": "", "discount": "10"}, "This field is required."),
        ({"offer_name": "X", "discount": "0"}, "discount must be more than 0"),
        ({"offer_name": "X", "discount": "ten"}, "discount must be a number"),
        # Found in the support-agent review: the message did not say to type a point.
        ({"offer_name": "X", "discount": "12,5"}, "a number of percent, such as 10 or 12.5"),
        ({"offer_name": "X", "discount": "10", "valid_until": "2020-01-01"}, "in the future"),
        (
            {"offer_name": "Sale\x07", "discount": "10"},
            "the offer name must not contain control characters (found U+0007)",
        ),
    ],
)
def test_invalid_issue_is_422_with_the_errors_in_place(signed_in_client, body, message):
    client = signed_in_client
    identify(client, LORRAINE)
    response = client.post(
        "/customers/1/vouchers", data={"valid_until": tomorrow(), **body}, headers=HTMX
    )
    assert response.status_code == 422
    assert is_fragment(response, "vouchers")
    assert message in response.get_data(as_text=True)
    assert vouchers() == []
    assert audit_entries() == []
    cold = client.post("/customers/1/vouchers", data={"valid_until": tomorrow(), **body})
    assert cold.status_code == 422
    assert "<html" in cold.get_data(as_text=True)


def test_every_field_of_a_refused_issue_says_what_is_wrong_at_once(signed_in_client):
    # Found taking a screenshot: with the date left empty, the mistyped discount got no
    # error, and the agent learnt of it only after picking a date.
    identify(signed_in_client, LORRAINE)
    body = {"offer_name": "Sorry", "discount": "12,5", "valid_until": ""}
    response = signed_in_client.post("/customers/1/vouchers", data=body, headers=HTMX)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "a number of percent, such as 10 or 12.5" in html
    assert "Pick the last day the voucher is valid." in html
    assert vouchers() == []
    # A field WTForms refused gets its error once, not the rules' as well.
    body = {"offer_name": "Sorry", "discount": "", "valid_until": tomorrow()}
    html = signed_in_client.post("/customers/1/vouchers", data=body, headers=HTMX).get_data(
        as_text=True
    )
    assert "This field is required." in html and "a number of percent" not in html


def test_issue_needs_the_csrf_token(client, agent):
    from tests.builders import sign_in

    identify(client, LORRAINE)
    sign_in(client)
    del client.environ_base["HTTP_X_CSRFTOKEN"]
    body = {"offer_name": "Apology", "discount": "10", "valid_until": tomorrow()}
    response = client.post("/customers/1/vouchers", data=body)
    assert response.status_code == 400
    assert vouchers() == []


def test_agent_voids_a_voucher_with_a_reason(signed_in_client):
    client = signed_in_client
    identify(client, LORRAINE)
    code = issued_code(client)
    (voucher,) = vouchers()
    url = f"/customers/1/vouchers/{voucher.id}/void"

    missing = client.post(url, data={"reason": " "}, headers=HTMX)
    assert missing.status_code == 422
    assert "This field is required." in missing.get_data(as_text=True)
    assert vouchers()[0].voided_at is None

    response = client.post(url, data={"reason": "sent twice"}, headers=HTMX)
    assert response.status_code == 200
    assert response.headers["HX-Trigger"] == "voucher-voided"
    assert is_fragment(response, "vouchers")
    assert "sent twice" in response.get_data(as_text=True)
    voided = vouchers()[0]
    assert (voided.voided_by, voided.void_reason) == (AGENT_EMAIL, "sent twice")
    (entry,) = audit_entries()
    assert (entry.action, entry.reason, entry.subject) == (
        "void_voucher",
        "sent twice",
        f"voucher {code}",
    )
    assert validate(client, code).status_code == 410


@pytest.mark.parametrize(
    ("reason", "found"), [("sent\x00twice", "U+0000"), ("\u202etwice", "U+202E")]
)
def test_a_void_reason_with_control_characters_is_422_and_voids_nothing(
    signed_in_client, reason, found
):
    client = signed_in_client
    identify(client, LORRAINE)
    issued_code(client)
    (voucher,) = vouchers()
    response = client.post(
        f"/customers/1/vouchers/{voucher.id}/void", data={"reason": reason}, headers=HTMX
    )
    assert response.status_code == 422
    assert is_fragment(response, "vouchers")
    page = response.get_data(as_text=True)
    assert f"must not contain control characters (found {found})" in page
    # What the agent typed is still there to correct.
    assert f'value="{reason}"' in page
    assert vouchers()[0].voided_at is None
    assert audit_entries() == []


def test_a_used_voucher_cannot_be_voided(signed_in_client):
    client = signed_in_client
    identify(client, LORRAINE)
    code = issued_code(client)
    validate(client, code)
    (voucher,) = vouchers()
    response = client.post(
        f"/customers/1/vouchers/{voucher.id}/void", data={"reason": "late"}, headers=HTMX
    )
    assert response.status_code == 422
    assert "only a voucher not yet used or voided can be voided" in response.get_data(as_text=True)
    assert vouchers()[0].voided_at is None


def test_unknown_customer_is_404(signed_in_client):
    response = signed_in_client.post(
        "/customers/99/vouchers",
        data={"offer_name": "X", "discount": "5", "valid_until": tomorrow()},
    )
    assert response.status_code == 404
    assert vouchers() == []


def test_offers_page_counts_issued_used_expired_and_voided(signed_in_client):
    client = signed_in_client
    codes = [
        issued_code(client, email=e, offer="Spring", discount=5) for e in (LORRAINE, MCFLY, BIFF)
    ]
    issued_code(client, email=LORRAINE, offer="Spring", discount=7)
    validate(client, codes[0])
    expire(codes[1])
    issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    html = client.get("/offers").get_data(as_text=True)
    assert 'aria-current="page">Offers' in html
    spring = html.split('id="offer-1"')[1].split("</tr>")[0]
    cells = [c.split(">", 1)[1].split("<")[0] for c in spring.split("<td")[1:]]
    assert cells[0] == "Spring" and cells[1] == "7%"
    assert cells[3:] == ["4", "2", "1", "1", "0"]
    assert "once per customer" in html.split('id="offer-2"')[1]


def test_the_offers_page_reads_its_offers_in_a_fixed_number_of_statements(signed_in_client):
    # Left from review: each offer was read again after the counts, one statement an
    # offer: with 1,000 offers the page ran 1,004 statements (0.5 s on both databases).
    client = signed_in_client

    def statements_of_page() -> int:
        with statements_run() as statements:
            assert client.get("/offers").status_code == 200
        return len(statements)

    issued_code(client, email=LORRAINE, offer="Offer 0")
    few = statements_of_page()
    for n in range(1, 12):
        issued_code(client, email=LORRAINE, offer=f"Offer {n}")
    assert statements_of_page() == few


def _offers_with_vouchers(names: list[str], vouchers_each: int) -> None:
    """Offers bulk-inserted with ``vouchers_each`` vouchers each, all of customer #1."""
    start = db.session.scalar(select(func.count()).select_from(Voucher))
    offers = db.session.execute(
        insert(Offer).returning(Offer.id), [{"name": name, "discount": 500} for name in names]
    )
    db.session.execute(
        insert(Voucher),
        [
            {
                "code": f"PAGE{start + n:012d}",
                "offer_id": offer_id,
                "contact_id": 1,
                "discount": 500,
                "expires_at": utcnow() + timedelta(days=30),
                "issued_by": "api",
            }
            for n, offer_id in enumerate(
                offer_id for (offer_id,) in offers for _ in range(vouchers_each)
            )
        ],
    )
    db.session.commit()


def test_the_offers_page_shows_a_page_of_offers_and_counts_only_theirs(signed_in_client):
    # Left from review: the page listed every offer with counts over the whole voucher
    # table: 1,000 offers and 300,000 vouchers took 375 ms on SQLite, 169 ms on MariaDB.
    client = signed_in_client
    identify(client, LORRAINE)
    _offers_with_vouchers([f"Offer {n:02d}" for n in range(OFFERS_PAGE_SIZE + 5)], 2)

    def work_of_first_page() -> int:
        with database_work() as work:
            html = client.get("/offers").get_data(as_text=True)
        assert html.count('<tr id="offer-') == OFFERS_PAGE_SIZE
        assert f"Offers 1 to {OFFERS_PAGE_SIZE} of " in html
        assert 'href="/offers?page=2" rel="next"' in html
        return work[0]

    few = work_of_first_page()
    # Offers named to come after the first page, with many vouchers.
    _offers_with_vouchers([f"Zed offer {n}" for n in range(5)], 600)
    many = work_of_first_page()
    assert many < 2 * few, (few, many)

    html = client.get("/offers?page=2").get_data(as_text=True)
    assert html.count('<tr id="offer-') == 10
    assert f"Offers {OFFERS_PAGE_SIZE + 1} to {OFFERS_PAGE_SIZE + 10} of 60." in html
    assert 'href="/offers?page=1" rel="prev"' in html and 'rel="next"' not in html
    zed = html.split(">Zed offer 4<")[1].split("</tr>")[0]
    cells = [c.split(">", 1)[1].split("<")[0] for c in zed.split("<td")[1:]]
    assert cells[2:] == ["600", "600", "0", "0", "0"]
    beyond = client.get("/offers?page=9").get_data(as_text=True)
    assert "No offers this far: there are 60 offers." in beyond
    assert 'href="/offers" rel="prev">Back to the first offers' in beyond


def test_the_voucher_section_lists_the_offers_without_counting_every_voucher(signed_in_client):
    # Left from review: the issue form's offer list came with every offer's voucher
    # counts, a pass over the whole voucher table on every customer page (with 300,000
    # vouchers: 0.5 s on SQLite, more on MariaDB).
    client = signed_in_client
    identify(client, MCFLY)
    issued_code(client, email=BIFF, offer="Offer A")
    issued_code(client, email=BIFF, offer="Offer B", once_per_customer=True)
    biff = db.session.scalar(select(Voucher.contact_id))
    db.session.rollback()

    def work_of_section() -> int:
        with database_work() as work:
            html = client.get("/customers/1/vouchers", headers=HTMX).get_data(as_text=True)
            # The request shares the test's app context: end its read here.
            db.session.rollback()
        assert '<option value="Offer A">10%</option>' in html
        assert '<option value="Offer B">10%, once per customer</option>' in html
        return work[0]

    def more_vouchers_of_biff(count: int) -> None:
        offers = [offer.id for offer in db.session.scalars(select(Offer))]
        start = db.session.scalar(select(func.count()).select_from(Voucher))
        db.session.execute(
            insert(Voucher),
            [
                {
                    "code": f"MORE{start + n:012d}",
                    "offer_id": offers[n % 2],
                    "contact_id": biff,
                    "discount": 1000,
                    "expires_at": utcnow() + timedelta(days=30),
                    "issued_by": "api",
                }
                for n in range(count)
            ],
        )
        db.session.commit()

    more_vouchers_of_biff(20)
    few = work_of_section()
    more_vouchers_of_biff(2000)
    many = work_of_section()
    assert many < 2 * few, (few, many)


def test_offers_page_empty_state(signed_in_client):
    response = signed_in_client.get("/offers")
    assert response.status_code == 200
    assert "No offers yet" in response.get_data(as_text=True)


def test_a_voucher_is_voided_only_from_its_own_customers_page(signed_in_client):
    client = signed_in_client
    issued_code(client, email=LORRAINE)
    issued_code(client, email=BIFF)
    (lorraines, _) = vouchers()
    response = client.post(
        f"/customers/2/vouchers/{lorraines.id}/void", data={"reason": "x"}, headers=HTMX
    )
    assert response.status_code == 422
    assert "this customer has no such voucher" in response.get_data(as_text=True)
    assert all(v.voided_at is None for v in vouchers())
    assert audit_entries() == []


def _other_customers_vouchers(offers: list[int], first_id: int, count: int) -> None:
    """``count`` customers of one row each, from id ``first_id``, each holding a voucher."""
    now = utcnow()
    ids = range(first_id, first_id + count)
    db.session.execute(
        insert(Contact),
        [{"id": i, "phoneNumber": str(i), "phone_key": str(i), "createdAt": now} for i in ids],
    )
    db.session.execute(
        insert(Voucher),
        [
            {
                "code": f"OTHER{i:08d}",
                "offer_id": offers[i % len(offers)],
                "contact_id": i,
                "discount": 1000,
                "expires_at": now + timedelta(days=30),
                "issued_by": "test",
            }
            for i in ids
        ],
    )
    db.session.commit()
    if db.engine.dialect.name != "sqlite":
        # Statistics as a database in use has them.
        db.session.execute(text("ANALYZE TABLE Contact, voucher, voucher_offer"))
        db.session.commit()


def _code(view) -> str:
    return view.code.replace("-", "")


def test_a_customers_vouchers_are_read_from_its_rows_not_from_every_voucher(app):
    # Left from review: a card's vouchers (every screen-pop poll with a caller ringing)
    # and the customer page's were read by joining every voucher to its offer and row
    # and testing the row in the WHERE; MariaDB went through every voucher of every
    # offer for a customer's few, so each poll cost more as vouchers were issued.
    now = utcnow()
    offers = [Offer(name=f"Offer {n}", discount=1000) for n in range(20)]
    db.session.add_all(offers)
    db.session.flush()
    offer_ids = [offer.id for offer in offers]
    # Customer 1: its primary, a secondary, and a row deleted while it was customer 3's
    # (3 was absorbed since, so the deleted row links to a secondary). Customer 5 apart.
    for row_id in (1, 3, 5):
        db.session.execute(
            insert(Contact), {"id": row_id, "phoneNumber": str(row_id), "createdAt": now}
        )
    db.session.execute(insert(Contact), {"id": 2, "linkedId": 1, "createdAt": now})
    db.session.execute(
        insert(Contact), {"id": 4, "linkedId": 3, "deletedAt": now, "createdAt": now}
    )
    db.session.execute(Contact.__table__.update().where(Contact.id == 3).values(linkedId=1))
    for row_id in (1, 2, 4, 5):
        db.session.execute(
            insert(Voucher),
            {
                "code": f"ROW{row_id}",
                "offer_id": offer_ids[row_id],
                "contact_id": row_id,
                "discount": 1000,
                "expires_at": now + timedelta(days=row_id),
                "issued_by": "test",
            },
        )
    db.session.commit()

    def work_of_reads() -> int:
        with database_work() as work:
            cards = vouchers_of_customers([1, 5])
            page = customer_vouchers(1)
            db.session.rollback()
        assert {owner: [_code(v) for v in views] for owner, views in cards.items()} == {
            1: ["ROW1", "ROW2", "ROW4"],
            5: ["ROW5"],
        }
        assert [_code(v) for v in page] == ["ROW1", "ROW2", "ROW4"]
        return work[0]

    _other_customers_vouchers(offer_ids, 100, 50)
    few = work_of_reads()
    _other_customers_vouchers(offer_ids, 1000, 4000)
    many = work_of_reads()
    assert many < 2 * few, (few, many)


def _offer_rule(name: str) -> bool:
    db.session.expire_all()
    once = db.session.scalar(select(Offer.once_per_customer).where(Offer.name == name))
    db.session.rollback()
    return once


def test_an_agent_turns_once_per_customer_on_and_off_from_the_offers_page(signed_in_client):
    # Left from the voucher review: the issue form's box can only turn the rule on (left
    # empty it keeps the offer as it is), so only the API could turn it off.
    client = signed_in_client
    first, second = (issued_code(client, email=LORRAINE, offer="Spring") for _ in range(2))
    assert validate(client, first).status_code == 200
    html = client.get("/offers").get_data(as_text=True)
    assert 'Limit to once per customer<span class="visually-hidden">: Spring</span>' in html

    response = client.post("/offers/1/redeemable", data={"once": "1"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/offers#offer-1")
    assert _offer_rule("Spring") is True
    assert validate(client, second, dry_run=True).status_code == 409
    page = client.get("/offers").get_data(as_text=True)
    assert "The offer is redeemable once per customer." in page
    assert "Allow any number of times<span" in page

    assert client.post("/offers/1/redeemable", data={"once": "0"}).status_code == 303
    assert _offer_rule("Spring") is False
    assert validate(client, second).status_code == 200
    entries = [e for e in audit_entries() if e.action == "offer_redeemable"]
    assert [(e.actor, e.subject) for e in entries] == [(AGENT_EMAIL, "offer Spring")] * 2
    assert [json.loads(e.after) for e in entries] == [
        {"redeemable": "once per customer"},
        {"redeemable": "any number of times"},
    ]


def test_setting_an_offers_rule_it_already_has_changes_and_audits_nothing(signed_in_client):
    # A double click, or two agents at once: the second post finds the rule set.
    issued_code(signed_in_client, email=LORRAINE, offer="Spring")
    for _ in range(2):
        response = signed_in_client.post("/offers/1/redeemable?page=1", data={"once": "1"})
        assert response.status_code == 303
    assert "already" in signed_in_client.get("/offers").get_data(as_text=True)
    assert [e.action for e in audit_entries()].count("offer_redeemable") == 1


@pytest.mark.parametrize(
    ("url", "body", "status", "message"),
    [
        ("/offers/1/redeemable", {"once": "yes"}, 422, "Choose once per customer"),
        ("/offers/1/redeemable", {}, 422, "Choose once per customer"),
        ("/offers/99/redeemable", {"once": "1"}, 404, "there is no such offer"),
    ],
)
def test_a_bad_rule_or_offer_is_refused_on_the_offers_page(
    signed_in_client, url, body, status, message
):
    issued_code(signed_in_client, email=LORRAINE, offer="Spring")
    response = signed_in_client.post(url, data=body)
    assert response.status_code == status
    assert message in response.get_data(as_text=True)
    assert _offer_rule("Spring") is False
    assert "offer_redeemable" not in [e.action for e in audit_entries()]


def test_the_voucher_section_marks_a_valid_voucher_its_offer_rule_bars(signed_in_client):
    # The list API and the screen-pop said so; the customer page, where an agent looks
    # when a shopper asks why the checkout refused a code, showed it as plainly valid.
    client = signed_in_client
    first, second = (
        issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
        for _ in range(2)
    )
    other = issued_code(client, email=LORRAINE, offer="Spring")
    section = client.get("/customers/1/vouchers", headers=HTMX).get_data(as_text=True)
    assert "offer already redeemed" not in section
    assert validate(client, first).status_code == 200
    section = client.get("/customers/1/vouchers", headers=HTMX).get_data(as_text=True)
    rows = {code: section.split(code, 1)[1].split("</tr>", 1)[0] for code in (first, second, other)}
    assert "offer already redeemed" in rows[second]
    assert "offer already redeemed" not in rows[first]  # used: its status says so
    assert "offer already redeemed" not in rows[other]
