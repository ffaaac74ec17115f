"""The customer page reads a customer once, pages its timeline by keyset on (createdAt, id)
and shows the first 50 contact rows, the rest one link away."""

import re
import tracemalloc
from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.builders import T0, identify, many_rows_customer, statements_run
from webapp.audit import record
from webapp.extensions import db
from webapp.models import SECONDARY, Contact, Identifier, utcnow

HTMX = {"HX-Request": "true"}
PAGE = 50


def timeline_of(html: str) -> str:
    """The timeline section of a whole page."""
    start = html.index('<section class="panel" id="timeline"')
    return html[start : html.index("</section>", start)]


def row_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r"Contact #(\d+) from", html)]


def more_link(html: str) -> str | None:
    found = re.search(r'<a class="button" href="([^"]+)" hx-get="\1"[^>]*>Show more</a>', html)
    return found.group(1).replace("&amp;", "&") if found else None


def walk(client, path: str) -> tuple[list[int], list[str]]:
    """Every row id shown by the page and its "Show more" fragments, and each part's HTML."""
    first = client.get(path)
    assert first.status_code == 200
    parts = [timeline_of(first.get_data(as_text=True))]
    link = more_link(parts[0])
    while link:
        response = client.get(link, headers=HTMX)
        assert response.status_code == 200
        assert "HX-Request" in response.vary
        parts.append(response.get_data(as_text=True))
        link = more_link(parts[-1])
    return [n for part in parts for n in row_ids(part)], parts


@pytest.mark.parametrize("count", [1, PAGE - 1, PAGE, PAGE + 1, 120])
@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_timeline_pages_hold_50_rows_in_order_none_twice_none_skipped(
    signed_in_client, count, order
):
    ids = many_rows_customer(count)
    expected = ids[::-1] if order == "newest" else ids
    query = "?order=oldest" if order == "oldest" else ""
    shown, parts = walk(signed_in_client, f"/customers/{ids[0]}{query}")
    assert shown == expected
    assert [len(row_ids(part)) for part in parts] == [
        min(PAGE, count - start) for start in range(0, count, PAGE)
    ]
    assert more_link(parts[-1]) is None


def test_header_counts_every_row_while_the_timeline_shows_a_page(signed_in_client):
    ids = many_rows_customer(120)
    html = signed_in_client.get(f"/customers/{ids[0]}").get_data(as_text=True)
    assert "<dt>Contacts</dt><dd>120</dd>" in html
    header = html[
        html.index('id="customer-header"') : html.index(
            "</header>", html.index('id="customer-header"')
        )
    ]
    # Ten e-mails (the primary's first), then a link to the page that lists them all.
    assert header.count('<span class="chip chip-email">') == 10
    assert "junk0@x.io</span>" in header and "junk10@x.io</span>" not in header
    contacts_page = f"/customers/{ids[0]}/contacts"
    assert f'<a class="chips-more" href="{contacts_page}">and 110 more e-mails</a>' in header
    assert header.count('<span class="chip chip-phone">') == 1
    assert len(row_ids(timeline_of(html))) == PAGE
    every = signed_in_client.get(contacts_page).get_data(as_text=True)
    assert all(f"junk{n}@x.io" in every for n in range(120))


@pytest.mark.parametrize("order", ["newest", "oldest"])
def test_other_events_show_once_on_the_page_of_their_time(signed_in_client, order):
    ids = many_rows_customer(120)
    # One entry at the exact time of a page's last row, one deep in the history.
    newest_first = order == "newest"
    boundary_row = ids[-PAGE] if newest_first else ids[PAGE - 1]
    boundary_at = db.session.get(Contact, boundary_row).createdAt
    for reason, at in (("at-the-boundary", boundary_at), ("deep-down", T0 + timedelta(minutes=5))):
        entry = record("agent@example.com", "block", customer_id=ids[0], reason=reason)
        entry.created_at = at
    db.session.commit()
    query = "" if newest_first else "?order=oldest"
    shown, parts = walk(signed_in_client, f"/customers/{ids[0]}{query}")
    assert shown == (ids[::-1] if newest_first else ids)
    everything = "".join(parts)
    assert everything.count("at-the-boundary") == 1
    assert everything.count("deep-down") == 1
    # Each sits on the page of the rows of its time, in time order with them.
    assert "at-the-boundary" in parts[0]
    deep = parts[-1] if newest_first else parts[0]
    newer, older = deep.index(f"Contact #{ids[12]} from"), deep.index(f"Contact #{ids[9]} from")
    where = deep.index("deep-down")
    assert (newer < where < older) if newest_first else (older < where < newer)


def test_show_more_is_a_fragment_for_htmx_and_a_page_without_it(signed_in_client):
    ids = many_rows_customer(120)
    first = signed_in_client.get(f"/customers/{ids[0]}").get_data(as_text=True)
    link = more_link(timeline_of(first))
    assert link.startswith(f"/customers/{ids[0]}?after=")

    fragment = signed_in_client.get(link, headers=HTMX)
    assert fragment.status_code == 200
    assert "HX-Request" in fragment.vary
    body = fragment.get_data(as_text=True)
    assert "<html" not in body and 'id="timeline"' not in body
    assert body.lstrip().startswith('<li class="event event-contact">')
    assert row_ids(body) == ids[::-1][PAGE : 2 * PAGE]

    # Without JavaScript the link is a plain page: the customer with the timeline from the cursor.
    page = signed_in_client.get(link)
    assert page.status_code == 200
    assert "HX-Request" in page.vary
    html = page.get_data(as_text=True)
    assert html.startswith("<!doctype html>")
    assert 'id="activity"' in html
    assert row_ids(timeline_of(html)) == ids[::-1][PAGE : 2 * PAGE]
    assert "Back to the newest" in timeline_of(html)
    assert more_link(timeline_of(html)) is not None

    # The order toggle still swaps the whole timeline.
    toggled = signed_in_client.get(f"/customers/{ids[0]}?order=oldest", headers=HTMX)
    assert (
        toggled.get_data(as_text=True).lstrip().startswith('<section class="panel" id="timeline"')
    )


def test_a_secondary_keeps_the_cursor_and_a_damaged_cursor_is_a_400(signed_in_client):
    ids = many_rows_customer(60)
    response = signed_in_client.get(f"/customers/{ids[5]}?order=oldest&after=x~1")
    assert response.status_code == 302
    assert response.headers["Location"] == f"/customers/{ids[0]}?order=oldest&after=x~1"
    for cursor in ("x~1", "2026-01-01T12:00:00~abc", "2026-01-01T12:00:00+02:00~1"):
        bad = signed_in_client.get(f"/customers/{ids[0]}", query_string={"after": cursor})
        assert bad.status_code == 400
        assert "Bad link" in bad.get_data(as_text=True)


# --- the contacts table shows 50 rows, the contacts page all of them ----------------


def contacts_of(html: str) -> str:
    start = html.index('<section class="panel" id="contacts"')
    return html[start : html.index("</section>", start)]


def table_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'<tr id="contact-(\d+)"', html)]


def all_contacts_link(html: str) -> str | None:
    found = re.search(r'<a class="button" href="([^"]+)" hx-get="\1"[^>]*>Show all', html)
    return found.group(1) if found else None


@pytest.mark.parametrize("count", [3, PAGE, PAGE + 1, 120])
def test_contacts_table_shows_the_first_50_rows_and_says_how_many_more(signed_in_client, count):
    ids = many_rows_customer(count)
    # A deleted row keeps its place in creation order and counts as a row.
    db.session.get(Contact, ids[1]).deletedAt = utcnow()
    db.session.commit()
    html = contacts_of(signed_in_client.get(f"/customers/{ids[0]}").get_data(as_text=True))
    assert table_ids(html) == ids[:PAGE]
    assert 'class="deleted"' in html
    link = all_contacts_link(html)
    if count > PAGE:
        hidden = count - PAGE
        assert f"{hidden} more contact{'s' if hidden != 1 else ''}</strong>" in html
        assert f"Showing the first {PAGE} of {count} contact rows:" in html
        assert link == f"/customers/{ids[0]}/contacts"
    else:
        assert "more contact" not in html and link is None


def test_the_contacts_page_shows_every_row_cold_and_as_a_fragment(signed_in_client):
    ids = many_rows_customer(120)
    cold = signed_in_client.get(f"/customers/{ids[0]}/contacts")
    assert cold.status_code == 200
    assert "HX-Request" in cold.vary
    page = cold.get_data(as_text=True)
    assert page.startswith("<!doctype html>")
    assert f'<a href="/customers/{ids[0]}">#{ids[0]}</a>' in page
    assert table_ids(contacts_of(page)) == ids
    assert "more contact" not in page

    # htmx swaps the whole table in place of the capped one.
    fragment = signed_in_client.get(f"/customers/{ids[0]}/contacts", headers=HTMX)
    assert fragment.status_code == 200
    body = fragment.get_data(as_text=True)
    assert "<html" not in body
    assert body.lstrip().startswith('<section class="panel" id="contacts"')
    assert table_ids(body) == ids

    moved = signed_in_client.get(f"/customers/{ids[7]}/contacts")
    assert moved.status_code == 302
    assert moved.headers["Location"] == f"/customers/{ids[0]}/contacts"


CONTACTS_PAGE = 200


def load_more_contacts_link(html: str) -> str | None:
    found = re.search(
        r'<a class="button" href="([^"]+)" hx-get="\1"[^>]*>Load more contacts</a>', html
    )
    return found.group(1).replace("&amp;", "&") if found else None


@pytest.mark.parametrize("count", [CONTACTS_PAGE, CONTACTS_PAGE + 1, 2 * CONTACTS_PAGE + 50])
def test_the_contacts_page_loads_200_rows_at_a_time_none_twice_none_skipped(
    signed_in_client, count
):
    ids = many_rows_customer(count)
    page = signed_in_client.get(f"/customers/{ids[0]}/contacts").get_data(as_text=True)
    parts = [contacts_of(page)]
    link = load_more_contacts_link(parts[0])
    while link:
        response = signed_in_client.get(link, headers=HTMX)
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        # Only the next rows (and the next "load more" row): no section, no page around them.
        assert body.lstrip().startswith("<tr") and "<section" not in body
        parts.append(body)
        link = load_more_contacts_link(body)
    assert [n for part in parts for n in table_ids(part)] == ids
    assert [len(table_ids(part)) for part in parts] == [
        min(CONTACTS_PAGE, count - start) for start in range(0, count, CONTACTS_PAGE)
    ]
    if count > CONTACTS_PAGE:
        assert f"{CONTACTS_PAGE} of {count} contact rows shown." in parts[0]


def test_a_later_contacts_page_opened_without_htmx_says_which_rows_it_shows(signed_in_client):
    ids = many_rows_customer(CONTACTS_PAGE + 30)
    later = signed_in_client.get(f"/customers/{ids[0]}/contacts?page=2")
    assert later.status_code == 200
    html = later.get_data(as_text=True)
    assert html.startswith("<!doctype html>")
    assert table_ids(contacts_of(html)) == ids[CONTACTS_PAGE:]
    assert f"Rows {CONTACTS_PAGE + 1} to {CONTACTS_PAGE + 30} of {CONTACTS_PAGE + 30}." in html
    assert f'<a href="/customers/{ids[0]}/contacts">Back to the first rows</a>' in html
    assert load_more_contacts_link(html) is None

    past = signed_in_client.get(f"/customers/{ids[0]}/contacts?page=9").get_data(as_text=True)
    assert table_ids(contacts_of(past)) == []
    assert f"No contact rows this far: the customer has {CONTACTS_PAGE + 30} contact rows." in past

    # Another contact id of the customer keeps the page it asked for.
    moved = signed_in_client.get(f"/customers/{ids[5]}/contacts?page=2")
    assert moved.status_code == 302
    assert moved.headers["Location"] == f"/customers/{ids[0]}/contacts?page=2"


def test_why_linked_chains_of_shown_rows_may_run_through_rows_not_shown(signed_in_client):
    ids = many_rows_customer(60)
    # Row 10 now shares nothing with the others but an e-mail that row 59, hidden, also holds.
    early, late = db.session.get(Contact, ids[10]), db.session.get(Contact, ids[59])
    early.phoneNumber, early.phone_key = "5559999", "5559999"
    late.email, late.email_key = early.email, early.email_key
    assert late.linkedId == ids[0] and late.linkPrecedence == SECONDARY
    db.session.commit()
    html = contacts_of(signed_in_client.get(f"/customers/{ids[0]}").get_data(as_text=True))
    assert ids[59] not in table_ids(html)
    row = html[html.index(f'<tr id="contact-{ids[10]}"') :]
    row = row[: row.index("</tr>")]
    assert re.findall(r"<li>#(\d+) → #(\d+) share (\w+)", row) == [
        (str(ids[0]), str(ids[59]), "phone"),
        (str(ids[59]), str(ids[10]), "email"),
    ]
    # The same chain on the contacts page, where row 59 is shown too.
    full = signed_in_client.get(f"/customers/{ids[0]}/contacts").get_data(as_text=True)
    assert row in full


# --- the customer is read once per page ----------------------------------------------


def history_statements(statements: list[str]) -> dict[str, int]:
    """How many times the page read the customer's rows (live ones alone included), which
    of their values are blocked, and their merges and audit entries."""
    flat = [re.sub(r'["`]', "", s).lower() for s in statements]
    return {
        "customer rows": sum(
            1 for s in flat if re.search(r"from contact\s+where", s) and "contact.linkedid =" in s
        ),
        "blocked values": sum(
            1
            for s in flat
            if re.search(r"from identifier\s+where", s) and "blocked_at is not null" in s
        ),
        "merges": sum(1 for s in flat if re.search(r"from merge\s+where", s)),
        "audit entries": sum(
            1 for s in flat if re.search(r"from audit_entry\s+where audit_entry.customer_id in", s)
        ),
    }


@pytest.mark.parametrize("order", ["", "?order=oldest"])
def test_one_customer_page_reads_the_contact_history_once(app, signed_in_client, order):
    identify(signed_in_client, "a@x.io", "111")
    identify(signed_in_client, "b@x.io", "222")
    identify(signed_in_client, "a@x.io", "222")  # merges customer 2 into 1
    with statements_run() as statements:
        response = signed_in_client.get(f"/customers/1{order}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    # The history is the timeline's alone: the activity section does not repeat it.
    assert 'id="activity"' in html
    assert html.count("Customer #2 merged into #1") == 1
    assert "merged into" in timeline_of(html)
    # Found in review: the reconciliation panel read the rows (and their blocked values)
    # again, a second read of every row for a customer of 40,000; it lists the page's.
    assert history_statements(statements) == {
        "customer rows": 1,
        "blocked values": 2,  # one statement per kind: e-mails, phones
        "merges": 1,
        "audit entries": 1,
    }


def _block_and_unblock(client, phone: str) -> None:
    """Block ``phone`` (splitting the customer its rows share) and unblock it (joining them)."""
    data = {"value": phone, "reason": "junk"}
    assert client.post("/identifiers/block", data=data).status_code == 303
    claim = db.session.scalar(select(Identifier.id).where(Identifier.key == phone))
    assert client.post(f"/identifiers/{claim}/unblock").status_code == 303


def _peak_memory_of_customer_page(client, rows: int, phone: str) -> int:
    """Peak bytes Python allocates for the page of a customer joined again by an unblock.

    ``rows`` rows share ``phone`` (each its own e-mail): blocking it splits them into as
    many customers, and unblocking joins them, one audit entry naming each.
    """
    ids = many_rows_customer(rows, phone=phone, name=f"p{phone}-")
    _block_and_unblock(client, phone)
    tracemalloc.start()
    try:
        response = client.get(f"/customers/{ids[0]}")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert response.status_code == 200
    assert f"Contact #{ids[-1]} from checkout" in response.get_data(as_text=True)
    return peak


def test_the_audit_entries_naming_a_customer_are_read_once_each(app, signed_in_client):
    # Found by hand: the entries naming the customer came joined to every row they name,
    # states and all. After an unblock that joined 40,000 customers the page wanted
    # 80 GB and was killed; with 4,000 it took 1 GB.
    small = _peak_memory_of_customer_page(signed_in_client, 150, "5550001")
    large = _peak_memory_of_customer_page(signed_in_client, 600, "5550002")
    # Four times the rows: a third more memory here (2.5 MB to 3.4 MB), where the join
    # took six times as much (2.7 MB to 16.7 MB), growing with the square of the rows.
    assert large < 3 * small, (small, large)


def test_the_merges_of_one_act_are_one_timeline_event(signed_in_client):
    # Found by hand: an unblock that joined 40,000 customers put 40,000 merge events on
    # one timeline page, 22 MB of HTML that the browser took 16 s more to show.
    ids = many_rows_customer(30)
    _block_and_unblock(signed_in_client, "5550000")
    html = timeline_of(signed_in_client.get(f"/customers/{ids[0]}").get_data(as_text=True))
    assert html.count("merged into") == 1
    assert f"29 customers merged into #{ids[0]}" in html
    named = ", ".join(f"#{n}" for n in ids[1:11])
    assert f"{named} and 19 more" in html
    # A few are named in the title.
    few = many_rows_customer(3, phone="5550003", name="few")
    _block_and_unblock(signed_in_client, "5550003")
    html = timeline_of(signed_in_client.get(f"/customers/{few[0]}").get_data(as_text=True))
    assert f"Customers #{few[1]} and #{few[2]} merged into #{few[0]}" in html
