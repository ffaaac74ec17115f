"""Vouchers in headless Chromium: issue on the customer page, void with a reason, offers."""

from __future__ import annotations

import os
import re
from datetime import timedelta

from playwright.sync_api import expect

from tests.builders import identify
from tests.test_vouchers_api import LORRAINE, MCFLY, issued_code, validate
from webapp.models import utcnow

# Set VOUCHER_SCREENSHOTS=some/dir to keep a PNG of each page for review.
SCREENSHOTS = os.environ.get("VOUCHER_SCREENSHOTS")


def snapshot(page, name: str, selector: str | None = None) -> None:
    if SCREENSHOTS:
        # caret="initial": hiding the caret injects a style the CSP (rightly) blocks.
        path = os.path.join(SCREENSHOTS, f"{name}.png")
        if selector:
            page.locator(selector).screenshot(path=path, caret="initial")
        else:
            page.screenshot(path=path, full_page=True, caret="initial")


def test_issue_and_void_on_the_customer_page_then_see_the_offer(signed_in_page, client, api_key):
    page = signed_in_page
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    used = issued_code(client, email=MCFLY, offer="Welcome", discount=5, once_per_customer=True)
    assert validate(client, used, email=MCFLY).status_code == 200

    page.goto("/customers/1")
    section = page.locator("#vouchers")
    expect(section.get_by_role("heading", name="Vouchers")).to_be_visible()
    expect(section.locator("#voucher-1")).to_contain_text("used")

    section.get_by_text("Issue a voucher").click()
    section.get_by_label("Offer").fill("Apology")
    section.get_by_label("Discount (%)").fill("0")
    section.get_by_label("Valid until (end of day, UTC)").fill(
        (utcnow() + timedelta(days=7)).date().isoformat()
    )
    section.get_by_role("button", name="Issue", exact=True).click()
    # The 422 fragment is swapped in place, the dialog still open, the error shown.
    expect(section.locator(".field-errors")).to_contain_text("more than 0")
    snapshot(page, "vouchers-issue-error")

    section.get_by_label("Discount (%)").fill("15")
    section.get_by_role("button", name="Issue", exact=True).click()
    expect(section.get_by_role("status")).to_contain_text("15% off, Apology")
    rows = section.locator("tbody tr")
    expect(rows).to_have_count(2)
    # Valid first, then used.
    expect(rows.nth(0)).to_contain_text("Apology")
    expect(rows.nth(0)).to_contain_text("valid")
    expect(rows.nth(1)).to_contain_text("Welcome")
    expect(page).to_have_url(re.compile(r"/customers/1$"))
    snapshot(page, "vouchers-section")

    rows.nth(0).get_by_text("Void…").click()
    rows.nth(0).get_by_label(re.compile("Why void")).fill("issued by mistake")
    rows.nth(0).get_by_role("button", name="Void voucher").click()
    expect(section.get_by_role("status")).to_contain_text("Voided")
    expect(section.locator("tbody tr").nth(1)).to_contain_text("issued by mistake")

    page.get_by_role("link", name="Offers").click()
    expect(page.get_by_role("heading", name="Offers")).to_be_visible()
    apology = page.locator("tr", has_text="Apology")
    expect(apology).to_contain_text("15%")
    expect(page.locator("tr", has_text="Welcome")).to_contain_text("once per customer")
    snapshot(page, "vouchers-offers")

    # On a phone the tables become cards; the section is still whole.
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/customers/1")
    expect(page.locator("#vouchers")).to_contain_text("issued by mistake")
    snapshot(page, "vouchers-section-phone", "#vouchers")
    assert page.console_errors == [], page.console_errors
