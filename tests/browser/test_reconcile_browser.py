"""Manual reconciliation in headless Chromium: merge two customers, block a value and see the
split, unblock it, and run a whole-database reconciliation to the end."""

import os
import re

from playwright.sync_api import expect

from tests.builders import identify, many_rows_customer
from webapp.dashboard.search import reindex

# Set RECONCILE_SCREENSHOTS=some/dir to keep a PNG of each page for review.
SCREENSHOTS = os.environ.get("RECONCILE_SCREENSHOTS")


def snapshot(page, name: str) -> None:
    if SCREENSHOTS:
        # caret="initial": hiding the caret injects a style the CSP blocks.
        page.screenshot(
            path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True, caret="initial"
        )
        # And as a phone shows it.
        size = page.viewport_size
        page.set_viewport_size({"width": 390, "height": 844})
        page.screenshot(
            path=os.path.join(SCREENSHOTS, f"{name}-phone.png"), full_page=True, caret="initial"
        )
        page.set_viewport_size(size)


def seed(client, pairs):
    for email, phone in pairs:
        status, body = identify(client, email, phone)
        assert status == 200, body
    reindex()


def test_merge_two_customers_through_the_dialog(signed_in_page, client):
    page = signed_in_page
    seed(client, [("lorraine@hillvalley.edu", "+1 555 0100"), ("lorraine.b@gmail.com", "777")])
    page.goto("/customers/2")
    page.get_by_role("link", name="Merge with…").click()
    expect(page).to_have_url(re.compile(r"/customers/2/merge$"))
    page.get_by_role("searchbox", name="Find the other customer").press_sequentially(
        "hillvalley", delay=40
    )
    candidates = page.locator("#merge-candidates")
    expect(candidates).to_contain_text("lorraine@hillvalley.edu")
    candidates.get_by_role("link", name="Preview merge with #1").click()
    preview = page.locator("#merge-preview")
    expect(preview).to_contain_text("Survives (the older primary): #1")
    expect(preview).to_contain_text("1 contact row will move to customer #1")
    snapshot(page, "merge-preview")
    preview.get_by_role("button", name="Merge #2 into #1").click()
    expect(page).to_have_url(re.compile(r"/customers/1$"))
    header = page.locator("#customer-header")
    expect(header).to_contain_text("lorraine.b@gmail.com")
    expect(header).to_contain_text("+1 555 0100")
    expect(page.locator("#timeline")).to_contain_text("agent@example.com")
    assert page.console_errors == []


def test_the_merge_dialog_shows_who_each_customer_is_by_name(signed_in_page, client):
    page = signed_in_page
    seed(client, [("ann@x.io", "111"), ("xiaoming@x.cn", "222")])
    page.goto("/customers/2")
    page.get_by_role("textbox", name="Name").fill("王小明 (Wang)")
    page.get_by_role("button", name="Save name").click()
    expect(page.locator("#customer-heading")).to_contain_text("王小明 (Wang)")
    page.goto("/customers/1/merge")
    page.get_by_role("searchbox", name="Find the other customer").press_sequentially(
        "wang", delay=40
    )
    candidates = page.locator("#merge-candidates")
    name = candidates.locator(".customer-name")
    expect(name).to_have_text("王小明 (Wang)")
    expect(name).to_have_attribute("dir", "auto")
    candidates.get_by_role("link", name="Preview merge with #2").click()
    expect(page.locator("#merge-preview")).to_contain_text("Is absorbed: 王小明 (Wang) customer #2")
    snapshot(page, "merge-named")
    assert page.console_errors == []


def test_the_merge_dialog_loads_more_candidates_than_its_first_twenty(signed_in_page, client):
    from webapp.engagements.names import set_display_name

    page = signed_in_page
    seed(client, [(f"shopper{n:02d}@gmail.com", None) for n in range(25)])
    assert set_display_name(3, "Zoë Ångström", "agent@example.com")
    page.goto("/customers/1/merge")
    page.get_by_role("searchbox", name="Find the other customer").press_sequentially(
        "gmail", delay=40
    )
    candidates = page.locator("#merge-candidates")
    expect(candidates.locator("tbody tr:not(.load-more)")).to_have_count(20)
    candidates.get_by_role("link", name="Load more customers").click()
    expect(candidates.locator("tbody tr:not(.load-more)")).to_have_count(25)
    expect(candidates.get_by_role("link", name="Load more customers")).to_have_count(0)
    # A customer of the appended rows, named, previews like the first ones.
    row = candidates.locator("tr", has_text="Zoë Ångström")
    row.get_by_role("link", name="Preview merge with #3").click()
    expect(page.locator("#merge-preview")).to_contain_text("Is absorbed: Zoë Ångström customer #3")
    snapshot(page, "merge-load-more")
    assert page.console_errors == []


def test_block_a_shared_phone_and_see_the_split_then_unblock(signed_in_page, client):
    page = signed_in_page
    seed(client, [("ann@example.com", "555"), ("bob@example.com", "555")])
    page.goto("/customers/1")
    header = page.locator("#customer-header")
    expect(header).to_contain_text("bob@example.com")
    panel = page.locator("#reconcile-panel")
    value = panel.locator("li", has_text="555")
    value.locator("summary", has_text="Block…").click()
    # The form's own errors come back in place (422) before anything is blocked.
    value.get_by_role("button", name="Block").click()
    expect(value.locator("form")).to_contain_text("This field is required.")
    snapshot(page, "block-error")
    value.get_by_label("Why block 555?").fill("the shop's own phone")
    value.get_by_role("button", name="Block").click()
    expect(page.locator(".flash")).to_contain_text("555 is blocked")
    expect(header).not_to_contain_text("bob@example.com")
    expect(panel).to_contain_text("blocked")
    snapshot(page, "customer-after-block")

    page.get_by_role("link", name="Blocked values").click()
    table = page.locator("#blocked-values")
    expect(table).to_contain_text("the shop's own phone")
    snapshot(page, "blocked-values")
    table.get_by_role("button", name="Unblock 555").click()
    expect(table).to_contain_text("555 is unblocked")
    expect(table).to_contain_text("No blocked values")
    page.goto("/customers/1")
    expect(page.locator("#customer-header")).to_contain_text("bob@example.com")
    assert page.console_errors == []


def test_run_a_whole_database_reconciliation_to_the_end(signed_in_page, client):
    page = signed_in_page
    seed(client, [("ann@example.com", "111"), ("bob@example.com", "222")])
    page.goto("/reconcile")
    expect(page.locator("#runs")).to_contain_text("No runs yet")
    page.get_by_role("button", name="Start a reconciliation run").click()
    expect(page).to_have_url(re.compile(r"/reconcile/\d+$"))
    progress = page.locator("#progress")
    expect(progress.locator("#run-status")).to_have_text("done", timeout=30_000)
    expect(progress.locator("#run-summary")).to_contain_text("0 customers changed")
    expect(progress.locator("progress")).to_have_attribute("value", "100")
    snapshot(page, "reconcile-run")
    page.get_by_role("link", name="Reconciliation").first.click()
    expect(page.locator("#runs")).to_contain_text("done")
    assert page.console_errors == []


def test_a_customer_whose_primary_was_deleted_outside_the_dashboard_is_regrouped(
    signed_in_page, client, app
):
    from sqlalchemy import update

    from webapp.extensions import db
    from webapp.models import Contact, utcnow

    page = signed_in_page
    seed(client, [("doc@hillvalley.edu", "555-0100"), ("emmett@hillvalley.edu", "555-0100")])
    page.goto("/customers/1")
    # SQL run on the table by hand while the agent has the customer open.
    with app.app_context():
        db.session.execute(update(Contact).where(Contact.id == 1).values(deletedAt=utcnow()))
        db.session.commit()
    page.locator("#timeline").get_by_role("link", name="Oldest first").click()
    toast = page.locator("#htmx-error")
    expect(toast).to_have_text("Customer #1 needs regrouping: reload the page to regroup it.")
    page.goto("/?q=hillvalley")
    row = page.locator("#results tr.result")
    expect(row).to_contain_text("needs regrouping")
    row.get_by_role("link", name="#1").click()
    expect(page.locator("#orphaned-title")).to_have_text("Customer #1 needs regrouping")
    snapshot(page, "needs-regrouping")
    page.get_by_role("button", name="Regroup customer").click()
    expect(page).to_have_url(re.compile(r"/customers/2$"))
    expect(page.locator("body")).to_contain_text("Contact 2 became the primary")
    # htmx logs the refused swap itself; nothing else went wrong.
    assert page.console_errors == ["Response Status Error Code 409 from /customers/1?order=oldest"]


def test_delete_asks_inside_the_row_it_is_about_with_focus_on_the_question(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(60)
    target = ids[44]
    page.goto(f"/customers/{ids[0]}")
    page.locator("#panel-contacts").get_by_role("link", name="Show all 60 contacts").click()
    row = page.locator(f"#panel-contact-{target}")
    delete = row.get_by_role("link", name="Delete…")
    # The row sits at the bottom of the window, as when the agent scrolled down to it.
    delete.evaluate("link => link.scrollIntoView({block: 'end'})")
    delete.click()
    # It asked far below, after the last of the 60 rows, and focus stayed on the link.
    form = row.locator("form")
    expect(form).to_have_id(f"delete-confirm-{target}")
    expect(form).to_be_focused()
    expect(form).to_have_accessible_name(f"Delete contact #{target}")
    expect(form).to_be_in_viewport(ratio=1)
    below = form.bounding_box()["y"] - delete.bounding_box()["y"]
    assert 0 < below < 80, below
    snapshot(page, "delete-in-row")
    # From the keyboard: Tab reaches the reason; Escape closes it and gives focus back.
    page.keyboard.press("Tab")
    expect(row.get_by_label("Reason (optional)")).to_be_focused()
    page.keyboard.press("Escape")
    expect(form).to_have_count(0)
    expect(delete).to_be_focused()
    # Opened with Enter, Cancel closes it the same way, without leaving the page.
    page.keyboard.press("Enter")
    expect(form).to_be_focused()
    row.get_by_role("link", name="Cancel").click()
    expect(form).to_have_count(0)
    expect(delete).to_be_focused()
    # And it deletes from there.
    delete.click()
    row.get_by_label("Reason (optional)").fill("a duplicate")
    row.get_by_role("button", name=f"Delete contact #{target}").click()
    expect(page.locator(".flash")).to_contain_text(f"Contact #{target} deleted")
    expect(page.locator(f"#panel-contact-{target}")).to_have_count(0)
    assert page.console_errors == []


def test_delete_without_javascript_opens_its_page(page_without_javascript, app):
    page = page_without_javascript
    ids = many_rows_customer(3)
    page.goto(f"/customers/{ids[0]}")
    page.locator(f"#panel-contact-{ids[2]}").get_by_role("link", name="Delete…").click()
    expect(page).to_have_url(re.compile(rf"/contacts/{ids[2]}/delete$"))
    expect(page.get_by_role("heading", name=f"Delete contact #{ids[2]}")).to_be_visible()
    page.get_by_label("Reason (optional)").fill("a duplicate")
    page.get_by_role("button", name=f"Delete contact #{ids[2]}").click()
    expect(page).to_have_url(re.compile(rf"/customers/{ids[0]}$"))
    expect(page.locator(".flash")).to_contain_text(f"Contact #{ids[2]} deleted")


def test_a_big_customers_panel_shows_the_first_values_then_all_of_a_list(signed_in_page, app):
    page = signed_in_page
    ids = many_rows_customer(60)  # 60 e-mails and one phone they share
    page.goto(f"/customers/{ids[0]}")
    values = page.locator("#panel-values")
    contacts = page.locator("#panel-contacts")
    expect(values.locator("li")).to_have_count(20)
    expect(contacts.locator("li")).to_have_count(20)
    expect(values).to_contain_text("Showing the first 20 of 61 values.")
    values.get_by_role("link", name="Show all 61 values").press("Enter")
    expect(values.locator("li")).to_have_count(61)
    expect(values.get_by_role("link", name="Show all 61 values")).to_have_count(0)
    # Focus goes to the list's heading, so Tab goes on through the values shown now.
    expect(values.get_by_role("heading", name="Values")).to_be_focused()
    expect(contacts.locator("li")).to_have_count(20)
    contacts.get_by_role("link", name="Show all 60 contacts").click()
    expect(contacts.locator("li")).to_have_count(60)
    expect(contacts.get_by_role("heading", name="Contacts")).to_be_focused()
    # A value of the ones shown now blocks like the first ones.
    value = values.locator("li", has_text="junk59@x.io")
    value.locator("summary", has_text="Block…").click()
    value.get_by_label("Why block junk59@x.io?").fill("a test address")
    value.get_by_role("button", name="Block").click()
    expect(page.locator(".flash")).to_contain_text("junk59@x.io is blocked")
    assert page.console_errors == []


def test_show_all_values_without_javascript_opens_the_page_of_every_one(
    page_without_javascript, app
):
    page = page_without_javascript
    ids = many_rows_customer(30)
    page.goto(f"/customers/{ids[0]}")
    page.get_by_role("link", name="Show all 30 contacts").click()
    expect(page).to_have_url(re.compile(rf"/customers/{ids[0]}/values#panel-contacts$"))
    expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Values and contacts of customer #{ids[0]}"
    )
    expect(page.locator("#panel-values li")).to_have_count(31)
    expect(page.locator("#panel-contacts li")).to_have_count(30)
    expect(
        page.locator("#panel-contacts").get_by_role("heading", name="Contacts")
    ).to_be_in_viewport()
