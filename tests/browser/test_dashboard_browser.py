"""The dashboard in headless Chromium: sign in, search as you type, open a customer, sign out."""

import re

from playwright.sync_api import expect

from tests.builders import AGENT_PASSWORD, identify, many_rows_customer
from webapp.dashboard.search import reindex


def seed_customers(client):
    for email, phone in [
        ("lorraine@hillvalley.edu", "+1 555 0100"),
        ("mcfly@hillvalley.edu", "+1 555 0100"),
        ("biff@tannen.com", "555-9999"),
    ]:
        status, body = identify(client, email, phone)
        assert status == 200, body
    reindex()


def test_sign_in_search_open_customer_sign_out(signed_in_page, client):
    page = signed_in_page
    seed_customers(client)

    search = page.get_by_label("Search customers")
    # Typed key by key, with no Enter: the active search updates the results.
    search.press_sequentially("hillval", delay=40)
    results = page.locator("#results")
    expect(results.get_by_role("link", name="#1")).to_be_visible()
    expect(results).to_contain_text("mcfly@hillvalley.edu")
    expect(results).not_to_contain_text("biff@tannen.com")
    expect(page).to_have_url(re.compile(r"/\?q=hillval$"))

    search.fill("555 99 99")
    search.dispatch_event("input")
    expect(results).to_contain_text("biff@tannen.com")
    expect(results).not_to_contain_text("lorraine")

    search.fill("nobody-like-this")
    search.dispatch_event("input")
    expect(results).to_contain_text("No match")

    page.go_back()
    # htmx keeps no history cache, so going back reloads the page; its results show
    # before its scripts have run, and an input typed then would reach no htmx.
    expect(results).to_contain_text("biff@tannen.com")
    page.wait_for_load_state("load")

    search.fill("lorraine")
    search.dispatch_event("input")
    results.get_by_role("link", name="#1").click()
    expect(page).to_have_url(re.compile(r"/customers/1$"))
    expect(page.get_by_role("heading", name="Customer #1")).to_be_visible()
    header = page.locator("#customer-header")
    expect(header).to_contain_text("lorraine@hillvalley.edu")
    expect(header).to_contain_text("mcfly@hillvalley.edu")
    expect(page.locator("#contacts")).to_contain_text("share phone")

    page.get_by_role("link", name="Oldest first").click()
    expect(page).to_have_url(re.compile(r"order=oldest"))
    expect(page.locator("#timeline .event").first).to_contain_text("Contact #1")

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.goto("/customers/1")
    expect(page).to_have_url(re.compile(r"/sign-in\?next="))
    assert page.console_errors == []


def test_wrong_password_is_shown_in_place(page, agent):
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/"))
    page.get_by_label("E-mail").fill(agent.email)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong e-mail or password")
    assert page.console_errors == []


def test_a_signed_out_agent_reaches_the_sign_in_form_from_a_long_search(page, agent):
    # 320 emoji: the search box's longest term. Percent-encoded again in next, the page's
    # URL made a sign-in URL that gunicorn refused with its "URI Too Long" page.
    page.goto("/?q=" + "\U0001f600" * 320)
    expect(page).to_have_url(re.compile(r"/sign-in\?next=/$"))
    page.get_by_label("E-mail").fill(agent.email)
    page.get_by_label("Password").fill(AGENT_PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    # Back to the page's path, without the search.
    expect(page.get_by_role("heading", name="Find a customer")).to_be_visible()
    expect(page).to_have_url(re.compile(r"/$"))
    assert page.console_errors == []


def test_search_works_without_javascript(page_without_javascript, client):
    page = page_without_javascript
    seed_customers(client)
    page.get_by_label("Search customers").fill("tannen")
    page.get_by_role("button", name="Search").click()
    expect(page).to_have_url(re.compile(r"/\?q=tannen$"))
    expect(page.locator("#results")).to_contain_text("biff@tannen.com")


def test_load_more_appends_the_next_page(signed_in_page, client):
    for n in range(23):
        identify(client, f"shopper{n:02d}@example.com", None)
    reindex()
    page = signed_in_page
    page.get_by_label("Search customers").fill("shopper")
    page.get_by_label("Search customers").press("Enter")
    rows = page.locator("#results tr.result")
    expect(rows).to_have_count(20)
    page.get_by_role("link", name="Load more customers").click()
    expect(rows).to_have_count(23)
    expect(page.get_by_role("link", name="Load more customers")).to_have_count(0)
    expect(rows.last).to_contain_text("shopper00@example.com")
    assert page.console_errors == []


def test_a_failed_htmx_action_says_what_the_server_said(signed_in_page, client):
    page = signed_in_page
    seed_customers(client)
    page.goto("/customers/1")
    # A token from an earlier session: the server refuses the form with its error page.
    page.locator("#name-form input[name=csrf_token]").evaluate("input => input.value = 'stale'")
    page.get_by_role("textbox", name="Name").fill("Lorraine Baines")
    page.get_by_role("button", name="Save name").click()
    toast = page.locator("#htmx-error")
    expect(toast).to_have_text("Form expired. Reload the page and try again.")
    expect(page.get_by_role("textbox", name="Name")).to_have_value("Lorraine Baines")
    # The message waits for the agent (it used to vanish after 6 s), who dismisses it.
    page.wait_for_timeout(6500)
    expect(toast).to_be_visible()
    toast.get_by_role("button", name="Dismiss this message").click()
    expect(toast).to_be_hidden()
    page.get_by_role("button", name="Save name").click()
    expect(toast).to_be_visible()
    # Starting another action puts it away too.
    page.locator("#timeline").get_by_role("link", name="Oldest first").click()
    expect(toast).to_be_hidden()
    page.reload()
    page.get_by_role("textbox", name="Name").fill("Lorraine Baines")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator("#name-form")).to_contain_text("Saved.")
    # A damaged "Show more" cursor (a link copied in part, say) is a 400 of another kind.
    page.evaluate(
        "htmx.ajax('GET', '/customers/1?after=damaged', {target: '#timeline', swap: 'beforeend'})"
    )
    expect(page.locator("#htmx-error")).to_have_text(
        "Bad link. This “show more” link is damaged; open the customer again."
    )
    # htmx itself logs each refused request; nothing else went wrong in the page.
    assert [e for e in page.console_errors if not e.startswith("Response Status Error")] == []


def test_on_this_page_links_lead_down_a_long_customer_page(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(60)
    page.goto(f"/customers/{ids[0]}")
    nav = page.get_by_role("navigation", name="On this page")
    expect(nav.get_by_role("link")).to_have_text(
        ["Contacts", "Timeline", "Values and contacts", "Activity", "Vouchers"]
    )
    for label, anchor, heading in [
        ("Vouchers", "vouchers", "Vouchers"),
        ("Values and contacts", "reconcile-panel", "Values and contacts"),
        ("Timeline", "timeline", "Timeline"),
    ]:
        page.evaluate("window.scrollTo(0, 0)")
        # From the keyboard: Enter follows the link, and the next Tab goes on in that part.
        nav.get_by_role("link", name=label, exact=True).focus()
        page.keyboard.press("Enter")
        expect(page).to_have_url(re.compile(rf"#{anchor}$"))
        expect(page.locator(f"#{anchor}").get_by_role("heading", name=heading)).to_be_in_viewport()
        page.keyboard.press("Tab")
        inside = page.evaluate(f"document.activeElement.closest('#{anchor}') !== null")
        assert inside, label
    assert page.console_errors == []
