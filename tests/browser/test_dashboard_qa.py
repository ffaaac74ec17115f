"""What a demanding agent checks in the browser: long values stay inside the page at desktop and
phone widths, long messages fold, Escape closes what opened, one click sends one request, and no
page logs a script error or a CSP violation."""

import re

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import sign_in_through_the_form
from tests.builders import AGENT_EMAIL, post_json

LONG_EMAIL = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}


def identify(base_url: str, email=None, phone=None) -> int:
    body = post_json(base_url, "/identify", {"email": email, "phoneNumber": phone})
    return body["contact"]["primaryContactId"]


def horizontal_overflow(page) -> int:
    """How many pixels the page is wider than the window (0 when nothing sticks out)."""
    return page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_254_character_email_stays_inside_the_page(signed_in_page, live_server, viewport):
    page = signed_in_page
    page.set_viewport_size(viewport)
    customer = identify(live_server.url, LONG_EMAIL, "+1 (555) 010-0188")

    page.goto(f"/customers/{customer}")
    expect(page.locator("#contacts")).to_contain_text("d.com")
    assert horizontal_overflow(page) == 0
    contacts = page.locator("#contacts")
    table_width = contacts.locator("table").evaluate("t => t.getBoundingClientRect().width")
    panel_width = contacts.evaluate("p => p.clientWidth")
    assert table_width <= panel_width, "the contacts table is wider than its panel"

    page.goto("/?q=aaaaaaaaaa")
    result = page.locator("tr.result")
    expect(result).to_have_count(1)
    assert horizontal_overflow(page) == 0
    # A wrapped address is a rounded box, not an ellipse; a phone number stays on one line.
    email_chip = result.locator(".chip-email")
    assert email_chip.evaluate("c => parseFloat(getComputedStyle(c).borderTopLeftRadius)") < 20
    phone_chip = result.locator(".chip-phone")
    line = phone_chip.evaluate("c => parseFloat(getComputedStyle(c).lineHeight)")
    assert phone_chip.evaluate("c => c.getBoundingClientRect().height") < 2 * line
    assert page.console_errors == []


def test_a_long_message_folds_and_line_breaks_stay(signed_in_page, live_server):
    page = signed_in_page
    base = live_server.url
    letter = "Refund request\nOrder 4471\nThanks"
    customer = post_json(
        base,
        "/events",
        {
            "channel": "email",
            "direction": "inbound",
            "email": "anna@example.com",
            "summary": letter,
        },
    )["event"]["customerId"]
    post_json(
        base,
        "/events",
        {
            "channel": "email",
            "direction": "inbound",
            "email": "anna@example.com",
            "summary": "W" * 4000,
        },
    )
    post_json(
        base,
        "/events",
        {
            "channel": "call",
            "direction": "inbound",
            "email": "anna@example.com",
            "durationSeconds": 54,
        },
    )

    page.goto(f"/customers/{customer}/activity")
    activity = page.locator("#activity")
    expect(activity).to_contain_text("54 s")
    expect(activity).not_to_contain_text("0 min 54 s")

    short = activity.locator("p.event-summary", has_text="Refund request")
    assert short.inner_text().splitlines() == ["Refund request", "Order 4471", "Thanks"]

    toggle = activity.get_by_text("Show the whole message (4,000 characters)")
    expect(toggle).to_be_visible()
    folded = activity.locator("details.event-summary-long")
    assert folded.evaluate("d => d.getBoundingClientRect().height") < 400
    toggle.click()
    expect(folded).to_have_attribute("open", "")
    expect(folded.locator("p.event-summary")).to_have_text("W" * 4000)
    expect(activity.get_by_text("Show less")).to_be_visible()
    assert page.console_errors == []


def test_the_long_message_opens_without_javascript(page_without_javascript, live_server):
    page = page_without_javascript
    customer = post_json(
        live_server.url,
        "/events",
        {
            "channel": "sms",
            "direction": "inbound",
            "phoneNumber": "+44 20 7946 0001",
            "summary": "y" * 1800,
        },
    )["event"]["customerId"]
    page.goto(f"/customers/{customer}/activity")
    page.get_by_text("Show the whole message (1,800 characters)").click()
    expect(page.locator("details.event-summary-long")).to_have_attribute("open", "")


def test_escape_closes_the_action_form_and_gives_focus_back(signed_in_page, live_server):
    page = signed_in_page
    customer = identify(live_server.url, "lorraine@hillvalley.edu", "123456")
    page.goto(f"/customers/{customer}")

    link = page.locator("#customer-header details.action-disclosure")
    link.locator("summary").focus()
    page.keyboard.press("Enter")
    expect(link).to_have_attribute("open", "")
    page.keyboard.press("Tab")
    expect(page.get_by_label("E-mail", exact=True)).to_be_focused()
    page.keyboard.press("Escape")
    expect(link).not_to_have_attribute("open", "")
    expect(link.locator("summary")).to_be_focused()

    issue = page.locator("details.voucher-issue")
    issue.locator("summary").click()
    expect(issue).to_have_attribute("open", "")
    page.get_by_label("Discount").fill("10")
    page.keyboard.press("Escape")
    expect(issue).not_to_have_attribute("open", "")
    expect(issue.locator("summary")).to_be_focused()
    assert page.console_errors == []


def test_escape_on_blank_space_in_the_page_closes_the_last_form_opened(signed_in_page, live_server):
    page = signed_in_page
    customer = identify(live_server.url, "lorraine@hillvalley.edu", "123456")
    page.goto(f"/customers/{customer}")
    link = page.locator("#customer-header details.action-disclosure")
    link.locator("summary").click()
    expect(link).to_have_attribute("open", "")
    # A click on blank space inside the page puts focus on main (tabindex=-1), not <body>.
    page.locator("#main").click(position={"x": 2, "y": 2})
    assert page.evaluate("() => document.activeElement.id") == "main"
    page.keyboard.press("Escape")
    expect(link).not_to_have_attribute("open", "")
    expect(link.locator("summary")).to_be_focused()
    assert page.console_errors == []


def test_escape_dismisses_the_screen_pop_which_comes_first_in_tab_order(
    signed_in_page, live_server
):
    page = signed_in_page
    identify(live_server.url, "marty@hillvalley.edu", "+1 555 0100")
    page.goto("/audit")
    post_json(
        live_server.url, "/calls/incoming", {"phoneNumber": "+1 555 0100", "callId": "pbx-qa"}
    )
    pop = page.locator(".screen-pop")
    expect(pop).to_be_visible(timeout=8000)
    # The pop sits before the page in the DOM: the keyboard reaches the call after the top bar.
    assert page.evaluate(
        "() => !!(document.getElementById('screen-pops').compareDocumentPosition("
        "document.getElementById('main')) & Node.DOCUMENT_POSITION_FOLLOWING)"
    )
    page.mouse.click(5, 700)  # blank space: focus on the page itself
    page.keyboard.press("Escape")
    expect(pop).to_have_count(0)
    # Dismissed for the tab's session: a reload does not bring it back.
    page.reload()
    page.wait_for_timeout(2500)
    expect(page.locator(".screen-pop")).to_have_count(0)
    assert page.console_errors == []


def test_escape_in_a_field_does_not_dismiss_the_call(signed_in_page, live_server):
    page = signed_in_page
    identify(live_server.url, "marty@hillvalley.edu", "+1 555 0100")
    page.goto("/audit")
    post_json(
        live_server.url, "/calls/incoming", {"phoneNumber": "+1 555 0100", "callId": "pbx-qa2"}
    )
    expect(page.locator(".screen-pop")).to_be_visible(timeout=8000)
    page.get_by_role("searchbox", name="Search customers").fill("mart")
    page.keyboard.press("Escape")
    expect(page.locator(".screen-pop")).to_be_visible()


def test_a_refused_sign_in_keeps_the_email_and_puts_the_cursor_in_the_password(page, agent):
    page.goto("/sign-in")
    page.get_by_label("E-mail").fill(AGENT_EMAIL)
    page.get_by_label("Password").fill("not the password")
    page.get_by_label("Password").press("Enter")
    expect(page.locator(".form-errors")).to_contain_text("Wrong e-mail or password")
    expect(page.get_by_label("E-mail")).to_have_value(AGENT_EMAIL)
    expect(page.get_by_label("Password")).to_be_focused()


def test_a_double_click_sends_the_sign_in_form_once(page, agent):
    posts = []
    page.on(
        "request",
        lambda request: (
            posts.append(request.url)
            if request.method == "POST" and "/sign-in" in request.url
            else None
        ),
    )
    page.goto("/sign-in")
    page.get_by_label("E-mail").fill(AGENT_EMAIL)
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").dblclick()
    expect(page.locator(".form-errors")).to_be_visible()
    page.wait_for_timeout(300)
    assert len(posts) == 1


def test_the_delete_page_names_the_customer_and_sits_under_its_heading(signed_in_page, live_server):
    page = signed_in_page
    primary = identify(live_server.url, "lorraine@hillvalley.edu", "123456")
    identify(live_server.url, "mcfly@hillvalley.edu", "123456")
    page.goto(f"/customers/{primary}")
    secondary = int(page.locator("#contacts tbody tr").nth(1).get_attribute("id").split("-")[1])
    page.goto(f"/contacts/{secondary}/delete")
    crumb = page.get_by_role("navigation", name="Breadcrumb").get_by_role("link")
    expect(crumb).to_have_text(f"Customer #{primary}")
    heading = page.get_by_role("heading", name=f"Delete contact #{secondary}")
    card_left = page.locator(f"#delete-confirm-{secondary}").bounding_box()["x"]
    assert abs(card_left - heading.bounding_box()["x"]) < 2


PAGES = [
    "/",
    "/?q=hillvalley",
    "/?q=ab",
    "/?q=nothing-like-this",
    "/customers/{id}",
    "/customers/{id}?order=oldest",
    "/customers/{id}/contacts",
    "/customers/{id}/activity",
    "/customers/{id}/vouchers",
    "/customers/{id}/link",
    "/customers/{id}/merge",
    "/identifiers/block",
    "/blocked",
    "/reconcile",
    "/offers",
    "/audit",
    "/customers/999999",
    "/nope",
]


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_every_page_fits_the_window_and_logs_no_error(signed_in_page, live_server, viewport):
    page = signed_in_page
    page.set_viewport_size(viewport)
    base = live_server.url
    customer = identify(base, "lorraine@hillvalley.edu", "123456")
    identify(base, "mcfly@hillvalley.edu", "123456")
    post_json(
        base,
        "/events",
        {
            "channel": "whatsapp",
            "direction": "inbound",
            "phoneNumber": "123456",
            "name": "محمد عبد الله 🦄",
            "summary": "مرحبا\nأين طلبي؟",
        },
    )
    post_json(
        base,
        "/vouchers/generate",
        {
            "email": "lorraine@hillvalley.edu",
            "offer_name": "Ein außergewöhnlich langer Angebotsname für den Winterschlussverkauf",
            "discount": 12.5,
            "expiry": "2099-12-31T23:59:59Z",
        },
    )
    for path in PAGES:
        response = page.goto(path.format(id=customer))
        assert response.status == (404 if "999999" in path or "nope" in path else 200), path
        assert horizontal_overflow(page) == 0, f"{path} is wider than {viewport['width']} px"
        assert page.console_errors == [], path
    page.goto(f"/customers/{customer}")
    expect(page.locator("#customer-name input[name=name]")).to_have_attribute("dir", "auto")
    expect(page.locator("#activity p.event-summary").first).to_have_attribute("dir", "auto")
    expect(page.locator("#activity")).to_contain_text(re.compile("مرحبا"))


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
@pytest.mark.parametrize(
    ("who", "way_back", "landing"),
    [("visitor", "Sign in", "Sign in"), ("agent", "Back to search", "Find a customer")],
)
def test_an_unknown_url_is_a_styled_page_with_a_way_back(
    page, agent, viewport, who, way_back, landing
):
    if who == "agent":
        sign_in_through_the_form(page)
    page.set_viewport_size(viewport)
    response = page.goto("/nope")
    assert response.status == 404
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    # The dashboard's stylesheet dresses it: a card on the page, not werkzeug's bare text.
    card = page.locator(".error-card")
    assert card.evaluate("c => getComputedStyle(c).backgroundColor") != "rgba(0, 0, 0, 0)"
    assert horizontal_overflow(page) == 0
    page.get_by_role("link", name=way_back).click()
    expect(page.get_by_role("heading", name=landing)).to_be_visible()
    assert page.console_errors == []


def test_a_rename_updates_the_heading_in_place(signed_in_page, live_server):
    page = signed_in_page
    customer = post_json(
        live_server.url,
        "/events",
        {"channel": "sms", "direction": "inbound", "phoneNumber": "+1 555 0100", "name": "Anna B"},
    )["event"]["customerId"]
    page.goto(f"/customers/{customer}")
    heading = page.locator("#customer-heading")
    expect(heading).to_have_text(f"Anna B customer #{customer}")
    expect(heading.locator(".customer-name")).to_have_attribute("dir", "auto")
    page.locator("#customer-name input[name=name]").fill("Anna Berg")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator("#customer-name .saved")).to_be_visible()
    expect(heading).to_have_text(f"Anna Berg customer #{customer}")
    expect(page).to_have_url(re.compile(rf"/customers/{customer}$"))
    assert page.console_errors == []


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_customer_of_65_rows_has_a_short_header_that_links_to_every_contact(
    signed_in_page, live_server, viewport
):
    page = signed_in_page
    page.set_viewport_size(viewport)
    customer = identify(live_server.url, "row00@x.io", "5550000")
    for n in range(1, 65):
        identify(live_server.url, f"row{n:02d}@x.io", "5550000")
    page.goto(f"/customers/{customer}")
    header = page.locator("#customer-header")
    expect(header.locator(".chip-email")).to_have_count(10)
    expect(header.locator(".chip-phone")).to_have_count(1)
    assert horizontal_overflow(page) == 0
    # The contacts section starts within the first screen at desktop width, not after a wall.
    if viewport is DESKTOP:
        assert page.locator("#contacts").bounding_box()["y"] < viewport["height"]
    header.get_by_role("link", name="and 55 more e-mails").click()
    expect(page).to_have_url(re.compile(rf"/customers/{customer}/contacts$"))
    expect(page.locator("#contacts tbody tr")).to_have_count(65)
    assert page.console_errors == []


def test_contact_cells_wrap_e_mails_and_keep_phones_whole(signed_in_page, live_server):
    page = signed_in_page
    customer = identify(live_server.url, LONG_EMAIL, "+1 (555) 010-0188")
    page.goto(f"/customers/{customer}")
    email = page.locator("#contacts td.cell-email")
    phone = page.locator("#contacts td.cell-phone")
    expect(email).to_have_text(LONG_EMAIL)
    expect(phone).to_have_text("+1 (555) 010-0188")
    assert email.evaluate("c => getComputedStyle(c).overflowWrap") == "anywhere"
    assert phone.evaluate("c => getComputedStyle(c).whiteSpace") == "nowrap"


@pytest.mark.parametrize(
    ("viewport", "least_height"), [(DESKTOP, 24), (PHONE, 44)], ids=["desktop", "phone"]
)
def test_a_customers_link_in_a_table_is_big_enough_to_tap(
    signed_in_page, live_server, viewport, least_height
):
    page = signed_in_page
    page.set_viewport_size(viewport)
    customer = identify(live_server.url, "tap@hillvalley.edu", "555 0142")
    page.goto(f"/customers/{customer}")
    page.get_by_role("textbox", name="Name").fill("Tap Target")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator("#name-form")).to_contain_text("Saved.")
    for path, name in (("/?q=tap@hillvalley", "Tap Target"), ("/audit", f"#{customer}")):
        page.goto(path)
        link = page.locator('td[data-label="Customer"] a').filter(has_text=name).first
        box = link.bounding_box()
        assert box["width"] >= 24 and box["height"] >= least_height, (path, box)


def test_back_to_a_customer_shows_the_channel_its_activity_lists(signed_in_page, live_server):
    """The filter swaps the activity in place, so the URL has no channel: back reloads it all.

    The browser put the channel chosen before back into the select again, over a list of every
    channel: "SMS" above calls and WhatsApp messages.
    """
    page = signed_in_page
    base = live_server.url
    customer = identify(base, "ann@example.com", "+1 555 0100")
    for channel in ("call", "whatsapp"):
        post_json(
            base,
            "/events",
            {"channel": channel, "direction": "inbound", "email": "ann@example.com"},
        )
    page.goto(f"/customers/{customer}")
    channel = page.locator("#activity").get_by_label("Channel")
    channel.select_option("sms")
    expect(page.locator("#activity")).to_contain_text("Nothing on this channel")
    page.get_by_role("link", name="Audit").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    page.go_back()
    expect(page.locator("#activity li.event")).to_have_count(2)
    expect(page.locator("#activity").get_by_label("Channel")).to_have_value("")
    assert page.console_errors == []
