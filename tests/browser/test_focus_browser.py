"""Keyboard focus after htmx swaps, in headless Chromium.

A swap that replaces the focused button or link leaves focus on <body>, and the next Tab starts
over at "Skip to content". app.js moves it instead: to the first invalid field (else the error
summary) of a form answered with errors, to the first new row after "load more", else to the
swapped section's heading; never on a swap the agent did not cause.
"""

import re

from playwright.sync_api import expect

from tests.builders import identify, many_rows_customer, post_json
from webapp.dashboard.search import reindex


def focused(page) -> str:
    """What has focus, for assertion messages."""
    return page.evaluate(
        "() => { const a = document.activeElement;"
        " return a ? a.tagName + '#' + a.id + ' ' + a.textContent.trim().slice(0, 40) : 'none' }"
    )


def test_a_form_answered_with_errors_puts_focus_on_its_first_invalid_field(
    signed_in_page, live_server
):
    page = signed_in_page
    base = live_server.url
    ann = post_json(base, "/identify", {"email": "ann@example.com", "phoneNumber": "555"})
    customer = ann["contact"]["primaryContactId"]
    post_json(
        base,
        "/vouchers/generate",
        {
            "email": "ann@example.com",
            "offer_name": "Welcome",
            "discount": 5,
            "expiry": "2099-12-31T23:59:59Z",
        },
    )
    page.goto(f"/customers/{customer}")

    # Block with no reason, sent from the keyboard: the reason field has focus and says why.
    value = page.locator("#reconcile-panel li", has_text="555")
    value.locator("summary", has_text="Block…").click()
    value.get_by_role("button", name="Block").press("Enter")
    reason = value.get_by_label("Why block 555?")
    expect(reason).to_have_attribute("aria-invalid", "true")
    expect(reason).to_be_focused()
    # Escape then closes that form, as from any of its fields.
    page.keyboard.press("Escape")
    expect(value.locator("details")).not_to_have_attribute("open", "")
    expect(value.locator("summary")).to_be_focused()

    # Link a value with both fields empty: no field is wrong, the form's error summary is.
    page.locator("#action-bar summary", has_text="Link a value").click()
    page.get_by_role("button", name=f"Link to customer #{customer}").click()
    summary = page.locator("#link-form .form-errors")
    expect(summary).to_contain_text("Enter an e-mail address, a phone number or both.")
    expect(summary).to_be_focused()

    # A name of spaces only.
    page.locator("#customer-name input[name=name]").fill("   ")
    page.get_by_role("button", name="Save name").click()
    name = page.locator("#customer-name input[name=name]")
    expect(name).to_have_attribute("aria-invalid", "true")
    expect(name).to_be_focused()

    # A voucher with no end date.
    vouchers = page.locator("#vouchers")
    vouchers.get_by_text("Issue a voucher").click()
    vouchers.get_by_label("Offer").fill("Apology")
    vouchers.get_by_label("Discount (%)").fill("10")
    vouchers.get_by_role("button", name="Issue", exact=True).click()
    until = vouchers.get_by_label("Valid until (end of day, UTC)")
    expect(until).to_have_attribute("aria-invalid", "true")
    expect(until).to_be_focused()

    # Void with a blank reason (spaces pass the browser's own check, not the server's).
    row = vouchers.locator("tbody tr", has_text="Welcome")
    row.get_by_text("Void…").click()
    row.get_by_label(re.compile("Why void")).fill("   ")
    row.get_by_role("button", name="Void voucher").click()
    void_reason = vouchers.locator("tbody tr", has_text="Welcome").get_by_label(
        re.compile("Why void")
    )
    expect(void_reason).to_have_attribute("aria-invalid", "true")
    expect(void_reason).to_be_focused()
    assert page.console_errors == []


def test_a_section_swapped_after_success_gives_focus_to_its_heading_or_keeps_the_control(
    signed_in_page, live_server
):
    page = signed_in_page
    customer = post_json(
        live_server.url,
        "/events",
        {"channel": "sms", "direction": "inbound", "phoneNumber": "+1 555 0100", "name": "Ann"},
    )["event"]["customerId"]
    page.goto(f"/customers/{customer}")

    page.locator("#customer-name input[name=name]").fill("Anna Berg")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator("#customer-name .saved")).to_be_visible()
    expect(page.get_by_role("heading", name="Name", exact=True)).to_be_focused()

    # The order toggle stays on the option just chosen; the channel filter keeps its select.
    timeline = page.locator("#timeline")
    timeline.get_by_role("link", name="Oldest first").press("Enter")
    expect(page).to_have_url(re.compile(r"order=oldest"))
    expect(timeline.get_by_role("link", name="Oldest first")).to_be_focused()
    channel = page.locator("#activity").get_by_label("Channel")
    channel.focus()
    page.keyboard.press("ArrowDown")
    expect(page.locator("#activity")).to_contain_text("Nothing on this channel")
    expect(page.locator("#activity").get_by_label("Channel")).to_be_focused()
    assert page.console_errors == []


def test_load_more_puts_focus_on_the_first_new_row(signed_in_page, client):
    for n in range(23):
        identify(client, f"shopper{n:02d}@example.com", None)
    reindex()
    page = signed_in_page
    page.get_by_label("Search customers").fill("shopper")
    page.get_by_label("Search customers").press("Enter")
    rows = page.locator("#results tr.result")
    expect(rows).to_have_count(20)
    # The rows show before the page's deferred scripts have run: pressed then, the link
    # is a plain link to page 2 (a CI run on a loaded machine saw its 3 rows alone).
    page.wait_for_function("() => document.readyState === 'complete'")
    page.get_by_role("link", name="Load more customers").press("Enter")
    expect(rows).to_have_count(23)
    expect(rows.nth(20).locator("a.customer-link")).to_be_focused()
    # The keyboard goes on through the new rows, not back to "Skip to content".
    page.keyboard.press("Tab")
    expect(rows.nth(21).locator("a.customer-link")).to_be_focused()
    assert page.console_errors == []


def test_show_more_and_show_all_put_focus_on_what_came_in(signed_in_page, live_server, app):
    page = signed_in_page
    ids = many_rows_customer(120)
    for n in range(32):
        post_json(
            live_server.url,
            "/events",
            {"channel": "sms", "direction": "inbound", "email": "junk0@x.io", "summary": f"#{n}"},
        )
    page.goto(f"/customers/{ids[0]}")

    events = page.locator("#timeline li.event")
    expect(events).to_have_count(50)
    page.locator("#timeline").get_by_role("link", name="Show more").press("Enter")
    expect(events).to_have_count(100)
    expect(events.nth(50)).to_be_focused()

    activity = page.locator("#activity li.event")
    expect(activity).to_have_count(30)
    page.get_by_role("link", name="Load older activity").press("Enter")
    expect(activity).to_have_count(32)
    expect(activity.nth(30)).to_be_focused()

    # The whole table is replaced by the longer one: its heading takes focus.
    page.locator("#contacts").get_by_role("link", name="Show all 120 contacts").press("Enter")
    expect(page.locator("#contacts tbody tr")).to_have_count(120)
    expect(page.locator("#contacts-title")).to_be_focused()
    assert page.console_errors == [], page.console_errors


def test_load_more_contacts_puts_focus_on_the_first_new_row(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(250)
    page.goto(f"/customers/{ids[0]}/contacts")
    rows = page.locator("#contacts tbody tr[id^='contact-']")
    expect(rows).to_have_count(200)
    page.get_by_role("link", name="Load more contacts").press("Enter")
    expect(rows).to_have_count(250)
    expect(page.locator(f"#contact-{ids[200]}")).to_be_focused()
    assert page.console_errors == []


def test_polling_never_takes_focus(signed_in_page, client):
    page = signed_in_page
    identify(client, "ann@example.com", "111")
    polls = []
    page.on(
        "request",
        lambda request: (
            polls.append(request.url)
            if re.search(r"/reconcile/\d+$", request.url) and request.headers.get("hx-request")
            else None
        ),
    )
    page.goto("/reconcile")
    page.get_by_role("button", name="Start a reconciliation run").click()
    expect(page).to_have_url(re.compile(r"/reconcile/\d+$"))
    # The progress fetches itself every second until the run is done; focus stays put.
    expect(page.locator("#run-status")).to_have_text("done", timeout=30_000)
    assert polls, "the progress never polled"
    assert page.evaluate("() => document.activeElement === document.body"), focused(page)
    assert page.console_errors == []
