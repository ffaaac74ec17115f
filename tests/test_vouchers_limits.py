"""Rate limits on POST /vouchers/validate: per client and per code, 429 with Retry-After."""

from __future__ import annotations

import hashlib
import socket
import threading

import pytest

from tests.builders import API_KEY_HEADER, stored_counters
from tests.openapi_check import assert_matches_openapi
from tests.test_vouchers_api import BIFF, LORRAINE, issued_code, validate, vouchers

pytestmark = pytest.mark.usefixtures("api_key")


@pytest.fixture
def app_config(app_config):
    # Each app gets fresh in-memory counters, so these runs are deterministic.
    return {
        **app_config,
        "VOUCHER_VALIDATE_LIMIT_PER_CLIENT": "6 per hour",
        "VOUCHER_VALIDATE_LIMIT_PER_CODE": "3 per hour",
    }


def assert_limited(app, response) -> None:
    assert response.status_code == 429
    error = response.get_json()["error"]
    assert error["code"] == "rate_limited"
    assert 0 < int(response.headers["Retry-After"]) <= 3600
    assert_matches_openapi(app, "/vouchers/validate", "post", response)


def test_guessing_one_code_is_limited_whatever_its_spelling(app, client):
    spellings = ["K7QM-3XPD-9R", "k7qm3xpd9r", "K7QM 3XPD 9R"]
    assert [validate(client, s, email=BIFF).status_code for s in spellings] == [404] * 3
    assert_limited(app, validate(client, "k7qm-3xpd-9r", email=BIFF))
    # Another code still has its own allowance.
    assert validate(client, "AAAA-BBBB-CC", email=BIFF).status_code == 404


def test_the_storage_holds_a_code_and_an_email_only_under_a_keyed_hash(app, client):
    # Anyone who can read a shared Redis could search the 50-bit code space offline
    # against a plain SHA-256 of each code; keyed with SECRET_KEY, they cannot.
    canonical, email_key = "K7QM3XPD9R", BIFF
    for spelling in ("k7qm 3xpd 9r", "K7QM-3XPD-9R"):
        assert validate(client, spelling, email=BIFF).status_code == 404
    counters = stored_counters()
    code_keys = [key for key in counters if "code:" in key]
    email_keys = [key for key in counters if ":email:" in key]
    # Two spellings of one code, one counter; two attempts for one e-mail, one counter.
    assert [counters[key] for key in code_keys + email_keys] == [2, 2], counters
    plain = {text: hashlib.sha256(text.encode()).hexdigest() for text in (canonical, email_key)}
    for key in counters:
        for text, digest in plain.items():
            assert text.lower() not in key.lower() and digest not in key, key
    # Under another SECRET_KEY the same code counts under another key: it is keyed.
    app.config["SECRET_KEY"] = "another-secret-key-of-enough-length"
    assert validate(client, canonical, email=BIFF).status_code == 404
    assert len([key for key in stored_counters() if "code:" in key]) == 2


def test_a_client_guessing_many_codes_is_limited_and_changes_nothing(app, client):
    code = issued_code(client)
    guesses = [f"AAAA-BBBB-{c}{d}" for c, d in zip("CDEFGH", "234567", strict=True)]
    assert [validate(client, g).status_code for g in guesses] == [404] * 6
    # Even the right code is refused now, and stays unused.
    assert_limited(app, validate(client, code, email=LORRAINE))
    assert vouchers()[0].used_at is None


def test_only_a_refusal_says_retry_after(app, client):
    code = issued_code(client)
    for response in (validate(client, "AAAA-BBBB-CC", email=BIFF), validate(client, code)):
        assert response.status_code in (200, 404)
        # The limit's headers are there; Retry-After, which tells a client to wait, is not.
        assert response.headers["X-RateLimit-Limit"]
        assert "Retry-After" not in response.headers


def test_a_limited_client_does_not_block_another(app, client):
    for _ in range(6):
        validate(client, "AAAA-BBBB-CC", email=BIFF)
    other = app.test_client()
    other.environ_base["HTTP_AUTHORIZATION"] = API_KEY_HEADER["Authorization"]
    code = issued_code(other)
    response = other.post(
        "/vouchers/validate",
        json={"code": code, "email": LORRAINE},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert response.status_code == 200


def test_one_checkout_redeems_for_more_customers_than_one_customers_allowance(app, client):
    # Every validation of a shop comes from its checkout's one address (here the test
    # client's). Counted by the address alone, the 7th customer got a 429: the shop's
    # allowance (6 an hour here, 30 a minute by default) was one for all its customers.
    emails = [f"shopper{n}@example.com" for n in range(8)]
    codes = [issued_code(client, email=email) for email in emails]
    answers = [validate(client, c, email=e).status_code for c, e in zip(codes, emails, strict=True)]
    assert answers == [200] * 8


def test_a_customer_guessing_codes_at_the_checkout_does_not_block_the_next_one(app, client):
    code = issued_code(client, email=LORRAINE)
    guesses = [f"AAAA-BBBB-{c}{d}" for c, d in zip("CDEFGH", "234567", strict=True)]
    assert [validate(client, g, email=BIFF).status_code for g in guesses] == [404] * 6
    # Biff is limited, however he spells his e-mail...
    assert_limited(app, validate(client, "AAAA-BBBB-J8", email=BIFF.upper()))
    # ...and Lorraine, at the same checkout a moment later, redeems her voucher.
    assert validate(client, code, email=LORRAINE).status_code == 200


def test_calls_without_a_valid_key_use_up_no_allowance(app, client):
    code = issued_code(client)
    # Someone who saw the code, without the key, from many addresses: all refused...
    for n in range(10):
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
            response = client.post(
                "/vouchers/validate",
                json={"code": code, "email": LORRAINE},
                headers=headers,
                environ_base={"REMOTE_ADDR": f"192.0.2.{n}"},
            )
            assert response.status_code == 401
    # ...and neither the code's nor the checkout's allowance went down.
    assert validate(client, code, email=LORRAINE, dry_run=True).status_code == 200
    assert validate(client, code, email=LORRAINE).status_code == 200


def limit_headers(response) -> dict[str, str]:
    return {k: v for k, v in response.headers if k.startswith("X-RateLimit") or k == "Retry-After"}


def test_calls_without_a_valid_key_learn_nothing_of_the_limits(app, client):
    code = issued_code(client)
    body = {"code": code, "email": BIFF}

    def unauthorised(response) -> None:
        assert response.status_code == 401, response.get_json()
        assert response.get_json()["error"]["code"] == "unauthorized"
        # Not how many attempts this code or e-mail has left, nor when its window ends.
        assert limit_headers(response) == {}
        assert_matches_openapi(app, "/vouchers/validate", "post", response)

    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
        unauthorised(client.post("/vouchers/validate", json=body, headers=headers))
    # The checkout uses up the code's allowance (3 an hour): someone is redeeming it.
    assert [validate(client, code, email=BIFF).status_code for _ in range(3)] == [404] * 3
    assert_limited(app, validate(client, code, email=BIFF))
    # A caller without the key, from the checkout's address or another, still gets a 401,
    # not the 429 that would tell it the code is being tried.
    for address in ("127.0.0.1", "192.0.2.7"):
        for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"}):
            unauthorised(
                client.post(
                    "/vouchers/validate",
                    json=body,
                    headers=headers,
                    environ_base={"REMOTE_ADDR": address},
                )
            )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/identify"),
        ("post", "/events"),
        ("post", "/events/batch"),
        ("post", "/calls/incoming"),
        ("post", "/vouchers/generate"),
        ("get", "/vouchers"),
        ("get", "/api/v1/customers/lookup"),
    ],
)
def test_no_keyed_endpoint_answers_a_401_with_limit_headers(app, client, method, path):
    response = getattr(client, method)(path, json={}, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401
    assert limit_headers(response) == {}


def test_generate_and_list_are_not_counted(client):
    for _ in range(8):
        issued_code(client)
    response = client.get("/vouchers", query_string={"email": LORRAINE})
    assert len(response.get_json()["vouchers"]) == 8


class TestWithRedisDown:
    @pytest.fixture
    def app_config(self, app_config):
        # Nothing listens on port 1: the shared storage is unreachable.
        return {**app_config, "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:1"}

    def test_limits_still_hold_per_process_and_nothing_fails(self, app, client):
        code = issued_code(client)
        answers = [validate(client, "K7QM-3XPD-9R", email=BIFF).status_code for _ in range(4)]
        assert answers == [404, 404, 404, 429]
        assert validate(client, code).status_code == 200


class TestWithRedisHung:
    """A Redis that takes connections and never answers (hung, or packets dropped)."""

    @pytest.fixture
    def app_config(self, app_config):
        with socket.socket() as hung:
            # Listening, never accepting: the kernel completes each connection, and no
            # answer ever comes.
            hung.bind(("127.0.0.1", 0))
            hung.listen(64)
            port = hung.getsockname()[1]
            yield {**app_config, "RATELIMIT_STORAGE_URI": f"redis://127.0.0.1:{port}"}

    def test_requests_still_get_answers_and_the_limits_still_hold(self, app, client):
        # Found by hand: the Redis client waits forever by default, so each rate-limited
        # request hung until gunicorn killed its worker (an HTML 500 to the client).
        answers: list[int] = []

        def guess() -> None:
            for _ in range(4):
                answers.append(validate(client, "K7QM-3XPD-9R", email=BIFF).status_code)

        worker = threading.Thread(target=guess, daemon=True)
        worker.start()
        # Generous: the storage's time-out is a second a call, then the limits count in memory.
        worker.join(timeout=30)
        assert not worker.is_alive(), f"still waiting on the storage after {answers}"
        assert answers == [404, 404, 404, 429]


def test_malformed_codes_from_many_clients_never_use_up_each_others_allowance(app, client):
    # Each client mistypes once; the per-code limit is 3 an hour.
    for n in range(5):
        response = client.post(
            "/vouchers/validate",
            json={"code": "not a code!", "email": LORRAINE},
            environ_base={"REMOTE_ADDR": f"192.0.2.{n + 10}"},
        )
        assert response.status_code == 400, response.get_json()
        assert set(response.get_json()["error"]["fields"]) == {"code"}
    # A malformed body still counts against its own client's limit (6 an hour).
    answers = [validate(client, "").status_code for _ in range(6)]
    assert answers == [400] * 6
    assert_limited(app, validate(client, ""))


def test_a_body_over_the_size_limit_is_a_413_and_leaves_the_limits_counting(app, client, caplog):
    """The per-code key read the body, and the 413 that raised broke the limiter's check.

    Flask-Limiter took the error for its storage failing: it logged "Rate limit storage
    unreachable" and counted on a fresh in-memory store of the process for the next
    second or more, so a code guessed up to its limit could be guessed again (with Redis,
    counters no longer shared), by anyone able to send a large body, key or not.
    """
    for _ in range(3):
        assert validate(client, "K7QM-3XPD-9R", email=BIFF).status_code == 404
    padding = "x" * (64 * 1024)
    # With the key, the body is refused; without, the key is, before the body is read.
    for headers, status in (({}, 413), ({"Authorization": ""}, 401)):
        response = client.post(
            "/vouchers/validate",
            json={"code": "K7QM-3XPD-9R", "email": BIFF, "padding": padding},
            headers=headers,
        )
        assert response.status_code == status
        assert_matches_openapi(app, "/vouchers/validate", "post", response)
    assert not [r for r in caplog.records if "storage unreachable" in r.getMessage()]
    # The code's allowance (3 an hour) is still used up.
    assert_limited(app, validate(client, "k7qm3xpd9r", email=BIFF))
