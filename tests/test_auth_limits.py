"""Rate limits on POST /sign-in: refused attempts per account and per address, 429 in place."""

from __future__ import annotations

import hashlib
import re
import threading
import time
import uuid
from collections import Counter
from http.cookiejar import CookieJar
from urllib.error import HTTPError
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, build_opener

import pytest
from flask import request, template_rendered
from sqlalchemy import select

from tests.builders import AGENT_EMAIL, AGENT_PASSWORD, csrf_token_from, make_agent
from tests.conftest import LiveServer
from webapp import create_app
from webapp.extensions import db
from webapp.models import User

WRONG = "not the password"
OTHER_EMAIL = "other.agent@example.com"
ELSEWHERE = {"REMOTE_ADDR": "192.0.2.7"}
LIMITED = re.compile(r"Too many sign-in attempts; try again in (\d+) minutes?\.")


@pytest.fixture
def app_config(app_config):
    # Each app gets fresh in-memory counters, so these runs are deterministic.
    return {
        **app_config,
        "SIGN_IN_LIMIT_PER_ACCOUNT": "3 per hour",
        "SIGN_IN_LIMIT_PER_ADDRESS": "5 per hour",
    }


def attempt(client, email=AGENT_EMAIL, password=WRONG, environ=None, headers=None):
    """One sign-in through the real form from ``environ``'s address (default 127.0.0.1)."""
    page = client.get("/sign-in", environ_base=environ or {})
    assert page.status_code == 200
    return client.post(
        "/sign-in",
        data={"email": email, "password": password, "csrf_token": csrf_token_from(page.text)},
        environ_base=environ or {},
        headers=headers,
    )


def assert_limited(response) -> None:
    """429 with the sign-in form, the wait said in minutes, and a Retry-After that agrees."""
    assert response.status_code == 429
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'id="sign-in-form"' in html
    found = LIMITED.search(html)
    assert found, html
    retry_after = int(response.headers["Retry-After"])
    assert 0 < retry_after <= 3600
    assert int(found.group(1)) == -(-retry_after // 60)


def test_bad_attempts_then_429_with_the_wait(app, client, agent):
    assert [attempt(client).status_code for _ in range(3)] == [422] * 3
    assert_limited(attempt(client))


def test_the_right_password_is_refused_while_limited(app, client, agent):
    for _ in range(3):
        attempt(client)
    response = attempt(client, password=AGENT_PASSWORD)
    assert_limited(response)
    assert "Wrong e-mail or password" not in response.get_data(as_text=True)
    assert client.get("/").status_code == 302
    db.session.rollback()
    assert db.session.scalar(select(User.last_login_at).where(User.email == AGENT_EMAIL)) is None


def test_every_spelling_of_an_account_shares_one_count(app, client, agent):
    for email in [AGENT_EMAIL, " Agent@Example.COM", "AGENT@EXAMPLE.COM "]:
        assert attempt(client, email=email).status_code == 422
    assert_limited(attempt(client, email="agent@example.com"))


def test_the_storage_holds_the_account_only_under_a_keyed_hash(app, client, agent):
    from tests.builders import stored_counters

    for email in [AGENT_EMAIL, " Agent@Example.COM"]:
        assert attempt(client, email=email).status_code == 422
    counters = stored_counters()
    accounts = [key for key in counters if "account:" in key]
    assert [counters[key] for key in accounts] == [2], counters
    plain = hashlib.sha256(AGENT_EMAIL.encode()).hexdigest()
    assert all(AGENT_EMAIL not in key and plain not in key for key in counters), counters


def test_the_account_limit_follows_the_account_to_other_addresses(app, client, agent):
    for _ in range(3):
        attempt(client)
    assert_limited(attempt(client, password=AGENT_PASSWORD, environ=ELSEWHERE))
    # Another account from that address is not touched by it.
    assert attempt(client, email=OTHER_EMAIL, environ=ELSEWHERE).status_code == 422


def test_another_account_from_the_same_address_meets_only_the_address_limit(app, client, agent):
    make_agent(OTHER_EMAIL)
    for _ in range(3):
        attempt(client)
    assert_limited(attempt(client))
    # Two refused attempts left for this address (5 in all), whichever account.
    assert [attempt(client, email=OTHER_EMAIL).status_code for _ in range(2)] == [422, 422]
    assert_limited(attempt(client, email=OTHER_EMAIL, password=AGENT_PASSWORD))
    # The same account from another address is fine.
    assert attempt(client, email=OTHER_EMAIL, environ=ELSEWHERE).status_code == 422


def test_unknown_accounts_are_counted_like_known_ones(app, client, agent):
    assert [attempt(client, email="nobody@example.com").status_code for _ in range(3)] == [422] * 3
    assert_limited(attempt(client, email="nobody@example.com"))


def test_successful_sign_ins_do_not_count(app, client, agent):
    # More sign-ins than either limit allows attempts, each followed by a sign-out.
    for _ in range(6):
        assert attempt(client, password=AGENT_PASSWORD).status_code == 302
        token = csrf_token_from(client.get("/").get_data(as_text=True))
        assert client.post("/sign-out", data={"csrf_token": token}).status_code == 302
    assert [attempt(client).status_code for _ in range(3)] == [422] * 3
    assert_limited(attempt(client))


def test_showing_the_form_is_never_limited(app, client, agent):
    for _ in range(5):
        attempt(client)
    assert_limited(attempt(client))
    for _ in range(10):
        response = client.get("/sign-in")
        assert response.status_code == 200
        assert "Too many" not in response.get_data(as_text=True)


def test_a_limited_htmx_submission_gets_the_same_page(app, client, agent):
    for _ in range(3):
        attempt(client)
    assert_limited(attempt(client, headers={"HX-Request": "true"}))


def test_a_request_refused_for_csrf_does_not_count(app, client, agent):
    for _ in range(5):
        response = client.post("/sign-in", data={"email": AGENT_EMAIL, "password": WRONG})
        assert response.status_code == 400
    assert [attempt(client).status_code for _ in range(3)] == [422] * 3


def test_a_429_answered_after_its_window_ended_gives_the_next_window_nothing(app, client, agent):
    # An attacker at the limit can send attempts that are refused (429) as a window ends: an
    # answer that takes longer than what is left of the window gave its count back to the
    # next window (a counter at -1), one more guess there for each such attempt.
    app.config["SIGN_IN_LIMIT_PER_ACCOUNT"] = "3 per 2 seconds"
    app.config["SIGN_IN_LIMIT_PER_ADDRESS"] = "100 per hour"
    assert [attempt(client).status_code for _ in range(3)] == [422] * 3

    def a_busy_server(_sender, template, **_extra):
        # The 429's page is slow to come, until after the window has ended.
        if request.method == "POST" and template.name == "auth/sign_in.html":
            time.sleep(2.1)

    with template_rendered.connected_to(a_busy_server, app):
        assert_limited(attempt(client))
    assert [attempt(client).status_code for _ in range(3)] == [422] * 3
    assert_limited(attempt(client))


def test_attempts_answered_503_while_the_database_is_gone_do_not_count(tmp_path):
    # Each attempt is counted as it is checked; one the app could not answer gives it back.
    from flask_migrate import upgrade

    database = tmp_path / "identity.db"
    limits = {"SIGN_IN_LIMIT_PER_ACCOUNT": "3 per hour", "SIGN_IN_LIMIT_PER_ADDRESS": "3 per hour"}
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": f"sqlite:///{database}", "TESTING": True, **limits}
    )
    client = app.test_client()
    with app.app_context():
        upgrade()
        make_agent()
        db.engine.dispose()
    # The file goes (a disk unmounted, say): new connections find no tables.
    database.rename(tmp_path / "gone.db")
    with app.app_context():
        assert [attempt(client).status_code for _ in range(5)] == [503] * 5
        db.engine.dispose()
    (tmp_path / "gone.db").rename(database)
    with app.app_context():
        assert [attempt(client).status_code for _ in range(3)] == [422] * 3
        assert_limited(attempt(client))
        db.session.remove()
        db.engine.dispose()


class TestWithRedisDown:
    @pytest.fixture
    def app_config(self, app_config):
        # Nothing listens on port 1: the shared storage is unreachable.
        return {**app_config, "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1"}

    def test_limits_still_hold_per_process_and_nothing_fails(self, app, client, agent):
        assert [attempt(client).status_code for _ in range(3)] == [422] * 3
        assert_limited(attempt(client, password=AGENT_PASSWORD))


def _live_attempt(base_url: str, opener, token: str, password: str) -> tuple[int, str, dict]:
    """POST the sign-in form over a real connection: status, page, headers."""
    body = urlencode({"email": AGENT_EMAIL, "password": password, "csrf_token": token})
    try:
        with opener.open(base_url + "/sign-in", body.encode(), timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def test_two_servers_share_the_account_limit_through_redis(agent, database_url, redis_url):
    env = {
        "RATELIMIT_STORAGE_URI": redis_url,
        # A fresh namespace, so that earlier runs' counters never count here.
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        # Both boxes must read each other's session cookie and CSRF token.
        "SECRET_KEY": uuid.uuid4().hex,
        "SIGN_IN_LIMIT_PER_ACCOUNT": "4 per hour",
        "SIGN_IN_LIMIT_PER_ADDRESS": "1000 per hour",
    }
    boxes = [LiveServer(database_url, workers=1, env=env) for _ in range(2)]
    try:
        opener = build_opener(HTTPCookieProcessor(CookieJar()))
        with opener.open(boxes[0].url + "/sign-in", timeout=30) as page:
            token = csrf_token_from(page.read().decode())
        answers = [_live_attempt(boxes[i % 2].url, opener, token, WRONG) for i in range(6)]
        right = _live_attempt(boxes[0].url, opener, token, AGENT_PASSWORD)
    finally:
        for box in boxes:
            box.stop()
    # Four refused attempts in all, whichever box took them; then 429, even for the password.
    assert [status for status, _, _ in answers] == [422] * 4 + [429] * 2
    for status, html, headers in [*answers[4:], right]:
        assert status == 429
        assert LIMITED.search(html)
        assert 0 < int(headers["Retry-After"]) <= 3600


def _all_at_once(base_url: str, opener, token: str, emails: list[str]) -> list[int]:
    """A wrong password for each of ``emails``, each from its own thread, released together."""
    barrier = threading.Barrier(len(emails))
    statuses: list[int | None] = [None] * len(emails)

    def send(index: int) -> None:
        body = urlencode({"email": emails[index], "password": WRONG, "csrf_token": token})
        barrier.wait()
        try:
            with opener.open(base_url + "/sign-in", body.encode(), timeout=60) as response:
                statuses[index] = response.status
        except HTTPError as error:
            statuses[index] = error.code

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(emails))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
@pytest.mark.parametrize("limit", ["account", "address"])
def test_simultaneous_attempts_get_no_more_than_the_allowance(
    agent, database_url, redis_url, limit
):
    # Checked before the answer and counted after it (deduct_when), 24 wrong passwords
    # sent together got 13 to 18 answers past an allowance of 5. Each attempt is now
    # counted as it is checked, in one step of the storage, and given back unless refused.
    allowance = "5 per hour"
    env = {
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "SIGN_IN_LIMIT_PER_ACCOUNT": allowance if limit == "account" else "1000 per hour",
        "SIGN_IN_LIMIT_PER_ADDRESS": allowance if limit == "address" else "1000 per hour",
    }
    server = LiveServer(database_url, workers=4, env=env)
    try:
        opener = build_opener(HTTPCookieProcessor(CookieJar()))
        with opener.open(server.url + "/sign-in", timeout=30) as page:
            token = csrf_token_from(page.read().decode())
        if limit == "account":
            emails = [AGENT_EMAIL] * 24
        else:
            emails = [f"nobody{n}@example.com" for n in range(24)]
        statuses = _all_at_once(server.url, opener, token, emails)
        right = _live_attempt(server.url, opener, token, AGENT_PASSWORD)
    finally:
        server.stop()
    assert Counter(statuses) == {422: 5, 429: 19}, statuses
    assert right[0] == 429


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_a_sign_in_gives_its_count_back_in_the_shared_storage(agent, database_url, redis_url):
    env = {
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "SIGN_IN_LIMIT_PER_ACCOUNT": "3 per hour",
        "SIGN_IN_LIMIT_PER_ADDRESS": "3 per hour",
    }
    server = LiveServer(database_url, workers=2, env=env)
    try:
        opener = build_opener(HTTPCookieProcessor(CookieJar()))
        with opener.open(server.url + "/sign-in", timeout=30) as page:
            token = csrf_token_from(page.read().decode())
        statuses = [_live_attempt(server.url, opener, token, WRONG)[0] for _ in range(2)]
        # Signed in: urllib follows the redirect to the search page.
        statuses.append(_live_attempt(server.url, opener, token, AGENT_PASSWORD)[0])
        signed_out = build_opener(HTTPCookieProcessor(CookieJar()))
        with signed_out.open(server.url + "/sign-in", timeout=30) as page:
            token = csrf_token_from(page.read().decode())
        statuses += [_live_attempt(server.url, signed_out, token, WRONG)[0] for _ in range(2)]
    finally:
        server.stop()
    # Two refused, the sign-in, the third refused, then the limit: the sign-in took none.
    assert statuses == [422, 422, 200, 422, 429]


def _from(address: str) -> dict:
    return {"X-Forwarded-For": address}


def _refusals_from(client, address: str, count: int) -> list[int]:
    # A different unknown account each time, so only the address limit can apply.
    return [
        attempt(client, email=f"nobody{n}@example.com", headers=_from(address)).status_code
        for n in range(count)
    ]


@pytest.fixture
def proxied_client(app_config, app):
    """A client of the app as deployed behind one load balancer (TRUSTED_PROXIES=1)."""
    return create_app({**app_config, "TRUSTED_PROXIES": 1}).test_client()


def test_behind_a_trusted_proxy_each_forwarded_client_is_counted_apart(proxied_client):
    assert _refusals_from(proxied_client, "198.51.100.1", 5) == [422] * 5
    limited = attempt(proxied_client, email="late@example.com", headers=_from("198.51.100.1"))
    assert_limited(limited)
    # Everybody else behind the same balancer keeps signing in.
    other = attempt(proxied_client, email="late@example.com", headers=_from("198.51.100.2"))
    assert other.status_code == 422


def test_without_a_trusted_proxy_a_forged_forwarded_address_changes_nothing(app, client):
    statuses = [
        attempt(client, email=f"nobody{n}@example.com", headers=_from(f"203.0.113.{n}")).status_code
        for n in range(5)
    ]
    assert statuses == [422] * 5
    assert_limited(attempt(client, email="late@example.com", headers=_from("203.0.113.99")))
