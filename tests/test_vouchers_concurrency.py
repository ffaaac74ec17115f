"""Simultaneous redemptions over real connections to a live gunicorn, on SQLite and MariaDB.

Also: the rate-limit counters shared through the real Redis by two servers,
as two boxes behind one load balancer would share them.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter

import pytest
from sqlalchemy import select

from tests.builders import TEST_API_KEY, identify
from tests.builders import post_once as post
from tests.conftest import LiveServer
from tests.test_vouchers_api import BIFF, LORRAINE, MCFLY, issued_code, vouchers
from webapp.extensions import db
from webapp.vouchers.models import Voucher

# ``client`` issues the vouchers the live servers redeem: it needs the key too.
pytestmark = pytest.mark.usefixtures("api_key")

PARALLEL = 24
# Limits far above what these tests send: they test redemption, not limiting.
GENEROUS = {
    "API_KEYS": TEST_API_KEY,
    "VOUCHER_VALIDATE_LIMIT_PER_CLIENT": "10000 per minute",
    "VOUCHER_VALIDATE_LIMIT_PER_CODE": "10000 per minute",
}


@pytest.fixture(scope="module")
def server_pool():
    """One gunicorn per database for this module: starting one takes seconds."""
    servers: dict[str, LiveServer] = {}
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def voucher_server(app, database_url, server_pool):
    """gunicorn, 4 workers, on this test's (emptied) database, with generous rate limits."""
    if database_url not in server_pool:
        server_pool[database_url] = LiveServer(database_url, workers=4, env=GENEROUS)
    return server_pool[database_url]


def all_at_once(bodies: list[tuple]) -> list[tuple[int, dict]]:
    """Send every (url, path, body[, headers]) from its own thread, released together."""
    barrier = threading.Barrier(len(bodies))
    results: list[tuple[int, dict] | None] = [None] * len(bodies)

    def send(index: int, url: str, path: str, body: dict, headers: dict | None = None) -> None:
        barrier.wait()
        results[index] = post(url, path, body, headers)

    threads = [threading.Thread(target=send, args=(i, *item)) for i, item in enumerate(bodies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_one_of_many_simultaneous_redemptions_wins(client, voucher_server):
    code = issued_code(client)
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    emails = [LORRAINE, MCFLY.upper()]
    requests = [
        (voucher_server.url, "/vouchers/validate", {"code": code, "email": emails[i % 2]})
        for i in range(PARALLEL)
    ]
    results = all_at_once(requests)
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: 1, 409: PARALLEL - 1}, results
    assert {body["error"]["code"] for status, body in results if status == 409} == {"voucher_used"}
    (voucher,) = vouchers()
    assert voucher.used_at is not None
    (winner,) = [body for status, body in results if status == 200]
    assert winner["used_at"].startswith(voucher.used_at.isoformat(timespec="seconds"))


def test_once_per_customer_holds_when_its_vouchers_are_redeemed_together(client, voucher_server):
    identify(client, LORRAINE, "123456")
    identify(client, MCFLY, "123456")
    emails = [LORRAINE, MCFLY]
    codes = [
        issued_code(client, email=emails[i % 2], offer="Welcome", once_per_customer=True)
        for i in range(PARALLEL)
    ]
    requests = [
        (voucher_server.url, "/vouchers/validate", {"code": code, "email": emails[i % 2]})
        for i, code in enumerate(codes)
    ]
    results = all_at_once(requests)
    assert Counter(status for status, _ in results) == {200: 1, 409: PARALLEL - 1}, results
    refused = {body["error"]["code"] for status, body in results if status == 409}
    assert refused == {"offer_already_redeemed"}
    db.session.expire_all()
    used = db.session.scalars(select(Voucher).where(Voucher.used_at.is_not(None))).all()
    assert len(used) == 1


def test_a_merge_racing_redemptions_lets_one_customer_redeem_once(client, voucher_server):
    # Lorraine and Biff start as two customers with a voucher each; a checkout
    # that merges them races their redemptions. Whatever the interleaving,
    # redemptions made after the merge see the merged customer.
    identify(client, LORRAINE, "111")
    identify(client, BIFF, "222")
    mine = issued_code(client, email=LORRAINE, offer="Welcome", once_per_customer=True)
    biffs = issued_code(client, email=BIFF, offer="Welcome")
    url = voucher_server.url
    results = all_at_once(
        [
            (url, "/identify", {"email": BIFF, "phoneNumber": "111"}),
            (url, "/vouchers/validate", {"code": mine, "email": LORRAINE}),
            (url, "/vouchers/validate", {"code": biffs, "email": BIFF}),
        ]
    )
    merged, first, second = results
    assert merged[0] == 200
    assert merged[1]["contact"]["primaryContactId"] == 1
    winners = [r for r in (first, second) if r[0] == 200]
    # Both may win only if both ran before the merge, when they were two customers.
    assert 1 <= len(winners) <= 2
    for status, body in (first, second):
        assert status == 200 or body["error"]["code"] == "offer_already_redeemed"
    # After the merge, nothing more of the offer for this customer.
    third = issued_code(client, email=BIFF, offer="Welcome")
    status, body = post(url, "/vouchers/validate", {"code": third, "email": LORRAINE})
    assert (status, body["error"]["code"]) == (409, "offer_already_redeemed")


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_two_servers_share_the_per_code_limit_through_redis(client, database_url, redis_url):
    code = issued_code(client)
    env = {
        "API_KEYS": TEST_API_KEY,
        "RATELIMIT_STORAGE_URI": redis_url,
        # A fresh namespace, so that earlier runs' counters never count here.
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        # Codes are counted under an HMAC keyed with SECRET_KEY: the boxes share it.
        "SECRET_KEY": uuid.uuid4().hex,
        "VOUCHER_VALIDATE_LIMIT_PER_CLIENT": "1000 per hour",
        "VOUCHER_VALIDATE_LIMIT_PER_CODE": "5 per hour",
    }
    boxes = [LiveServer(database_url, workers=2, env=env) for _ in range(2)]
    try:
        answers = [
            post(boxes[i % 2].url, "/vouchers/validate", {"code": code, "email": BIFF})
            for i in range(12)
        ]
    finally:
        for box in boxes:
            box.stop()
    statuses = [status for status, _ in answers]
    # Five attempts in all, whichever box and worker took them; then 429.
    assert statuses == [404] * 5 + [429] * 7
    assert answers[5][1]["error"]["code"] == "rate_limited"
    assert vouchers()[0].used_at is None


@pytest.mark.parametrize("dialect", ["sqlite"], indirect=True)
def test_simultaneous_attempts_on_one_code_get_no_more_than_its_allowance(
    client, database_url, redis_url
):
    # Each attempt is counted as it is checked, in one step of the storage. Checked first
    # and counted after the answer (Flask-Limiter's deduct_when), 8 to 10 of 24 attempts
    # sent together got past a code's allowance of 5.
    code = issued_code(client)
    env = {
        "API_KEYS": TEST_API_KEY,
        "RATELIMIT_STORAGE_URI": redis_url,
        "RATELIMIT_KEY_PREFIX": f"test-{uuid.uuid4().hex}",
        "VOUCHER_VALIDATE_LIMIT_PER_CLIENT": "1000 per hour",
        "VOUCHER_VALIDATE_LIMIT_PER_CODE": "5 per hour",
    }
    server = LiveServer(database_url, workers=4, env=env)
    try:
        body = {"code": code, "email": BIFF}
        results = all_at_once([(server.url, "/vouchers/validate", body)] * PARALLEL)
    finally:
        server.stop()
    assert Counter(status for status, _ in results) == {404: 5, 429: PARALLEL - 5}, results
    assert vouchers()[0].used_at is None


def test_one_issue_sent_24_times_at_once_with_its_key_issues_one_voucher(voucher_server):
    # A checkout that timed out and retried, many times over, all at once.
    body = {
        "email": LORRAINE,
        "offer_name": "Summer sale",
        "discount": 10,
        "expiry": "2099-01-01T00:00:00+00:00",
    }
    key = {"Idempotency-Key": str(uuid.uuid4())}
    results = all_at_once([(voucher_server.url, "/vouchers/generate", body, key)] * PARALLEL)
    statuses = Counter(status for status, _ in results)
    assert statuses == {201: 1, 200: PARALLEL - 1}, statuses
    assert len({answer["code"] for _, answer in results}) == 1
    assert len(vouchers()) == 1
