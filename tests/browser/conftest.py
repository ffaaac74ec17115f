"""Browser fixtures: headless Debian Chromium driven by Playwright against a live gunicorn.

``browser`` is shared by the session; ``page`` is a fresh browser context on
the ``live_server`` (so it runs once per database, like ``app``);
``signed_in_page`` has created an agent and signed in through the real form.
Each page records script errors and CSP violations in ``page.console_errors``.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.builders import AGENT_EMAIL, AGENT_PASSWORD

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items):
    """Everything under tests/browser is a browser test."""
    for item in items:
        if "/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the whole session (never downloaded: Debian's)."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (make browser installs it)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield instance
        instance.close()


def _new_tab(browser, live_server, **options) -> Page:
    """A tab in a context of its own on the live server, collecting script errors."""
    context = browser.new_context(
        base_url=live_server.url, viewport={"width": 1280, "height": 860}, **options
    )
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.console_errors = []

    def _on_console(message):
        # A 422 form answer or a 404 also logs an error; only script and CSP problems count.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            tab.console_errors.append(message.text)

    tab.on("console", _on_console)
    tab.on("pageerror", lambda error: tab.console_errors.append(str(error)))
    return tab


@pytest.fixture
def page(browser, live_server) -> Page:
    """A new browser tab on the live server; relative URLs work in goto()."""
    tab = _new_tab(browser, live_server)
    yield tab
    tab.context.close()


@pytest.fixture
def page_without_javascript(browser, live_server, agent) -> Page:
    """A tab with JavaScript off, signed in as the ``agent`` fixture's agent."""
    tab = _new_tab(browser, live_server, java_script_enabled=False)
    sign_in_through_the_form(tab)
    yield tab
    tab.context.close()


def sign_in_through_the_form(page: Page, email: str = AGENT_EMAIL, password: str = AGENT_PASSWORD):
    """Fill and submit the real sign-in form, and wait for the search page."""
    page.goto("/sign-in")
    page.get_by_label("E-mail").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Find a customer")).to_be_visible()


@pytest.fixture
def signed_in_page(page, agent) -> Page:
    """A browser tab signed in as the ``agent`` fixture's agent."""
    sign_in_through_the_form(page)
    return page
