"""Take the dashboard screenshots in docs/screenshots/ from a real app with demo data.

Usage: .venv/bin/python scripts/screenshots.py   (needs Chromium, see `make browser`)

Builds a throwaway SQLite database, fills it through the real identify API,
serves it with gunicorn and drives headless Chromium through the pages.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask_migrate import upgrade  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.conftest import LiveServer  # noqa: E402
from webapp import create_app  # noqa: E402
from webapp.auth.service import create_agent  # noqa: E402
from webapp.dashboard.search import reindex  # noqa: E402

log = logging.getLogger("screenshots")

OUT = ROOT / "docs" / "screenshots"
AGENT = ("dana@support.example", "demo password 1")
# (email, phone) identify calls, in order: two customers that a later order merges.
ORDERS = [
    ("lorraine@hillvalley.edu", "+1 (555) 010-0188"),
    ("mcfly@hillvalley.edu", "+1 555 010 0188"),
    ("marty.mcfly@hillvalley.edu", "+1 555 010 0199"),
    ("george@hillvalley.edu", "555-0142"),
    ("george@hillvalley.edu", "+1 555 010 0199"),
    ("doc.brown@hillvalley.edu", "555-1985"),
    ("biff@tannen.example", "555-0155"),
    ("jennifer.parker@hillvalley.edu", None),
    ("<b>not bold</b>@hillvalley.edu", None),
]


def seed(url: str) -> None:
    """Schema, an agent and customers, all through the app's own code."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        create_agent(*AGENT)
        client = app.test_client()
        for email, phone in ORDERS:
            response = client.post("/identify", json={"email": email, "phoneNumber": phone})
            if response.status_code != 200:
                log.info("skipped %s: %s", email, response.get_json()["error"]["message"])
        reindex()


def shoot(base_url: str) -> None:
    """Sign in and photograph the main pages, desktop and phone."""
    OUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        for name, viewport in [
            ("desktop", {"width": 1280, "height": 800}),
            ("phone", {"width": 390, "height": 844}),
        ]:
            context = browser.new_context(
                base_url=base_url, viewport=viewport, device_scale_factor=1
            )
            page = context.new_page()
            page.goto("/sign-in")
            if name == "desktop":
                page.screenshot(path=OUT / "sign-in.png")
            page.get_by_label("E-mail").fill(AGENT[0])
            page.get_by_label("Password").fill(AGENT[1])
            page.get_by_role("button", name="Sign in").click()
            page.get_by_label("Search customers").press_sequentially("hillvalley", delay=30)
            page.locator("#results table").wait_for()
            page.screenshot(path=OUT / f"search-{name}.png", full_page=name == "desktop")
            page.locator("#results").get_by_role("link", name="#1", exact=True).click()
            page.locator("#timeline").wait_for()
            page.screenshot(path=OUT / f"customer-{name}.png", full_page=True)
            context.close()
        browser.close()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'screenshots.db'}"
        seed(url)
        server = LiveServer(url, workers=2)
        try:
            shoot(server.url)
        finally:
            server.stop()
    log.info("screenshots written to %s", OUT.relative_to(ROOT))


if __name__ == "__main__":
    main()
