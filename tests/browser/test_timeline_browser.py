"""The customer page in headless Chromium: the timeline and the contacts table, 50 rows first."""

import re

from playwright.sync_api import expect

from tests.builders import many_rows_customer


def test_show_more_loads_the_next_fifty_rows_in_place(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(120)
    page.goto(f"/customers/{ids[0]}")
    rows = page.locator("#timeline li.event-contact")
    expect(rows).to_have_count(50)
    expect(rows.first).to_contain_text(f"Contact #{ids[-1]} from")

    page.locator("#timeline").get_by_role("link", name="Show more").click()
    expect(rows).to_have_count(100)
    # Swapped in place (no navigation), newest first throughout, each row once.
    expect(page).to_have_url(re.compile(rf"/customers/{ids[0]}$"))
    shown = [
        int(text.split("#")[1].split()[0])
        for text in rows.locator(".event-title").all_inner_texts()
    ]
    assert shown == ids[::-1][:100]
    expect(page.locator("#timeline").get_by_role("link", name="Show more")).to_have_count(1)
    expect(page.locator("#customer-header")).to_contain_text("junk0@x.io")
    assert page.console_errors == []


def test_the_contacts_table_shows_50_rows_then_all_in_place(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(120)
    page.goto(f"/customers/{ids[0]}")
    rows = page.locator("#contacts tbody tr")
    expect(rows).to_have_count(50)
    expect(page.locator("#contacts-more")).to_contain_text("70 more contacts")
    page.locator("#contacts").get_by_role("link", name="Show all 120 contacts").click()
    expect(rows).to_have_count(120)
    expect(page.locator("#contacts-more")).to_have_count(0)
    expect(page).to_have_url(re.compile(rf"/customers/{ids[0]}$"))
    expect(rows.last).to_have_id(f"contact-{ids[-1]}")
    assert page.console_errors == []


def test_a_long_contacts_list_loads_200_rows_at_a_time_in_place(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(450)
    page.goto(f"/customers/{ids[0]}")
    rows = page.locator("#contacts tbody tr[id^='contact-']")
    expect(rows).to_have_count(50)
    page.locator("#contacts").get_by_role("link", name="Show all 450 contacts").click()
    expect(rows).to_have_count(200)
    more = page.locator("#contacts-load-more")
    expect(more).to_contain_text("200 of 450 contact rows shown.")
    more.get_by_role("link", name="Load more contacts").click()
    expect(rows).to_have_count(400)
    expect(more).to_contain_text("400 of 450 contact rows shown.")
    more.get_by_role("link", name="Load more contacts").click()
    expect(rows).to_have_count(450)
    expect(more).to_have_count(0)
    # In place: still the customer page, every row once and in order.
    expect(page).to_have_url(re.compile(rf"/customers/{ids[0]}$"))
    assert [int(i.split("-")[1]) for i in rows.evaluate_all("rs => rs.map(r => r.id)")] == ids
    assert page.console_errors == []
