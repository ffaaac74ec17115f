"""Agents: sign-in and sign-out through the real forms, sessions, CSRF and `flask users`."""

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import g
from sqlalchemy import select

from tests.builders import (
    AGENT_EMAIL,
    AGENT_PASSWORD,
    commit_elsewhere,
    csrf_token_from,
    make_agent,
    sign_in,
)
from webapp import create_app
from webapp.auth import service
from webapp.extensions import db
from webapp.models import User

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD_PAGES = ["/", "/?q=lorraine", "/customers/1", "/audit", "/audit?action=merge"]


def _post_sign_in(client, email, password, next_=None):
    token = csrf_token_from(client.get("/sign-in").get_data(as_text=True))
    url = "/sign-in" if next_ is None else f"/sign-in?next={next_}"
    return client.post(url, data={"email": email, "password": password, "csrf_token": token})


@pytest.mark.parametrize("path", DASHBOARD_PAGES)
def test_every_dashboard_page_sends_a_signed_out_visitor_to_sign_in(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in?next=")
    assert "Customer" not in response.get_data(as_text=True)


@pytest.mark.parametrize("path", DASHBOARD_PAGES)
def test_signed_out_htmx_request_is_told_to_redirect(client, path):
    response = client.get(path, headers={"HX-Request": "true"})
    assert response.status_code == 401
    assert response.headers["HX-Redirect"].startswith("/sign-in?next=")


def test_sign_in_then_back_to_the_page_asked_for(client, agent):
    first = client.get("/audit?action=merge")
    target = first.headers["Location"]
    token = csrf_token_from(client.get(target).get_data(as_text=True))
    response = client.post(
        target, data={"email": AGENT_EMAIL, "password": AGENT_PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/audit?action=merge"
    assert client.get("/audit?action=merge").status_code == 200


# A search for 320 emoji, as the search box takes it: 3,840 bytes percent-encoded.
LONG_SEARCH = "/?q=" + quote("\U0001f600" * 320)
# gunicorn's limit on a request line (method, target, protocol): tests/test_gunicorn_limits.py.
REQUEST_LINE_LIMIT = 4094


def _fits(target: str, method: str = "POST") -> bool:
    return len(f"{method} {target} HTTP/1.1") <= REQUEST_LINE_LIMIT


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain"])
def test_a_page_too_long_to_come_back_to_keeps_its_path_in_next(client, htmx):
    assert _fits(LONG_SEARCH, "GET")
    # Its query percent-encoded again in next, the sign-in URL grew past the limit
    # (6,420 bytes): gunicorn answered 414 instead of showing the form.
    response = client.get(LONG_SEARCH, headers={"HX-Request": "true"} if htmx else {})
    target = response.headers["HX-Redirect" if htmx else "Location"]
    assert target == "/sign-in?next=/"
    path_and_query = "/customers/7/merge?q=" + quote("\U0001f600" * 300) + "&page=2"
    target = client.get(path_and_query).headers["Location"]
    assert target == "/sign-in?next=/customers/7/merge"


def test_a_page_that_fits_comes_back_whole_up_to_the_limit(client):
    # The longest query that keeps the form's POST line within the limit stays in next.
    base = len("POST /sign-in?next=/?q%3D HTTP/1.1")
    query = "a" * (REQUEST_LINE_LIMIT - base)
    longest = f"/?q={query}"
    assert client.get(longest).headers["Location"] == f"/sign-in?next=/?q%3D{query}"
    assert _fits(f"/sign-in?next=/?q%3D{query}")
    assert client.get(longest + "a").headers["Location"] == "/sign-in?next=/"


def test_a_long_page_is_followed_by_path_after_signing_in(client, agent):
    target = client.get(LONG_SEARCH).headers["Location"]
    page = client.get(target)
    assert page.status_code == 200
    assert f'action="{target}"' in page.get_data(as_text=True)
    token = csrf_token_from(page.get_data(as_text=True))
    data = {"email": AGENT_EMAIL, "password": AGENT_PASSWORD, "csrf_token": token}
    response = client.post(target, data=data)
    assert (response.status_code, response.headers["Location"]) == (302, "/")


def test_a_form_sent_from_a_long_page_after_the_session_ended_keeps_its_path(client):
    headers = {"Referer": "http://localhost" + LONG_SEARCH}
    response = client.post("/customers/1/name", data={"name": "Ann"}, headers=headers)
    assert (response.status_code, response.headers["Location"]) == (302, "/sign-in?next=/")


def test_a_path_too_long_for_next_leaves_next_out(app):
    from webapp.auth import sign_in_url

    with app.test_request_context("/"):
        assert sign_in_url("/\u00e9" * 300) == "/sign-in?next=/" + "%C3%A9/" * 299 + "%C3%A9"
        assert sign_in_url("/\u00e9" * 700 + "?q=a") == "/sign-in"
        assert sign_in_url(None) == "/sign-in"


@pytest.mark.parametrize(
    "next_",
    [
        "https://evil.example/",
        "//evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        # urlsplit drops tabs and line breaks first: these would read as //evil or //[.
        "/%09/evil.example",
        "/%09/%5B",
        "/%0A/evil.example",
        # A line break cannot go into a Location header.
        "/%0Ax",
        "/audit%0D%0ASet-Cookie:x=1",
        "/%7F",
    ],
)
def test_only_local_next_is_followed(client, agent, next_):
    # The sign-in form itself renders whatever next says.
    assert client.get(f"/sign-in?next={next_}").status_code == 200
    response = _post_sign_in(client, AGENT_EMAIL, AGENT_PASSWORD, next_=next_)
    assert response.status_code == 302
    assert response.headers["Location"] == "/"
    # Signed in, the sign-in page sends the agent on, home rather than to next.
    response = client.get(f"/sign-in?next={next_}")
    assert response.status_code == 302
    assert response.headers["Location"] == "/"


def test_sign_in_records_the_time_and_email_is_case_insensitive(client, agent):
    response = _post_sign_in(client, "  Agent@Example.COM ", AGENT_PASSWORD)
    assert response.status_code == 302
    user = db.session.scalar(select(User).where(User.email == AGENT_EMAIL))
    assert user.last_login_at is not None
    assert user.password_hash.startswith("$argon2id$")


def test_an_agent_is_found_by_any_spelling_of_their_address(app):
    make_agent("Jose\u0301@xn--bcher-kva.de")
    for typed in ("jos\u00e9@b\u00fccher.de", "JOSE\u0301@XN--BCHER-KVA.DE"):
        assert service.find_agent(typed) is not None, typed
        _as_a_new_request()
        response = _post_sign_in(app.test_client(), typed, AGENT_PASSWORD)
        assert response.status_code == 302, typed
    with pytest.raises(service.AgentError):
        make_agent("jos\u00e9@B\u00fccher.de")
    assert not service.disable_agent("jose\u0301@b\u00fccher.de").is_active


def test_sign_in_survives_a_write_committed_during_the_password_check(client, agent, monkeypatch):
    # The password check takes tens of milliseconds; on a live service other
    # requests commit meanwhile. On SQLite the sign-in used to answer 500
    # ("database is locked") when it then recorded the time.
    hasher = service._hasher()

    class BusyHasher:
        def verify(self, hashed, password):
            commit_elsewhere()
            return hasher.verify(hashed, password)

        def check_needs_rehash(self, hashed):
            return True

        def hash(self, password):
            return hasher.hash(password)

    monkeypatch.setattr(service, "_hasher", BusyHasher)
    old_hash = db.session.scalar(select(User.password_hash))
    response = _post_sign_in(client, AGENT_EMAIL, AGENT_PASSWORD)
    assert response.status_code == 302
    user = db.session.scalar(select(User).where(User.email == AGENT_EMAIL))
    assert user.last_login_at is not None
    assert user.password_hash != old_hash
    assert client.get("/").status_code == 200


@pytest.mark.parametrize(
    "email, password",
    [
        (AGENT_EMAIL, "wrong password!"),
        ("nobody@example.com", AGENT_PASSWORD),
        (AGENT_EMAIL.upper(), AGENT_PASSWORD + "x"),
    ],
)
def test_wrong_credentials_are_said_in_place(client, agent, email, password):
    response = _post_sign_in(client, email, password)
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert "Wrong e-mail or password" in html
    assert 'id="sign-in-form"' in html
    assert client.get("/").status_code == 302


def test_empty_form_shows_field_errors(client, agent):
    response = _post_sign_in(client, "", "")
    assert response.status_code == 422
    html = response.get_data(as_text=True)
    assert html.count("This field is required.") == 2
    assert 'aria-invalid="true"' in html


def test_disabled_agent_cannot_sign_in(client, app):
    make_agent(active=False)
    response = _post_sign_in(client, AGENT_EMAIL, AGENT_PASSWORD)
    assert response.status_code == 422
    assert "disabled" in response.get_data(as_text=True)


def test_disabling_an_agent_ends_their_session(signed_in_client, runner):
    assert signed_in_client.get("/").status_code == 200
    result = runner.invoke(args=["users", "disable", AGENT_EMAIL])
    assert result.exit_code == 0, result.output
    _as_a_new_request()
    assert signed_in_client.get("/").status_code == 302


def test_enabling_a_disabled_agent_again_does_not_bring_back_their_old_sessions(
    app, signed_in_client, runner
):
    """A session (or a copy of its cookie, as a stolen laptop keeps it) begun before the
    agent was disabled came back to life when they were enabled again."""
    copied = _session_cookie(signed_in_client)
    for command in ("disable", "enable"):
        result = runner.invoke(args=["users", command, AGENT_EMAIL])
        assert result.exit_code == 0, result.output
    _assert_a_replayed_cookie_is_sent_to_sign_in(app, copied)
    _as_a_new_request()
    assert signed_in_client.get("/").status_code == 302
    # The agent signs in again as before.
    _as_a_new_request()
    sign_in(signed_in_client)
    assert signed_in_client.get("/").status_code == 200


def test_sign_out_needs_the_csrf_token(signed_in_client):
    del signed_in_client.environ_base["HTTP_X_CSRFTOKEN"]
    response = signed_in_client.post("/sign-out")
    assert response.status_code == 400
    assert signed_in_client.get("/").status_code == 200


def test_sign_out_ends_the_session(signed_in_client):
    response = signed_in_client.post("/sign-out")
    assert response.status_code == 302
    assert response.headers["Location"] == "/sign-in"
    assert signed_in_client.get("/").status_code == 302


def _session_cookie(client) -> str:
    return client.get_cookie("session").value


def _as_a_new_request() -> None:
    """Forget what the last request left in ``g`` (the agent it loaded, its CSRF token):
    the test client runs every request in the fixture's app context, so ``g`` keeps
    them; a real request starts without."""
    g.pop("_login_user", None)
    g.pop("csrf_token", None)


def _assert_a_replayed_cookie_is_sent_to_sign_in(app, copied: str) -> None:
    """Someone who copied the session cookie earlier replays it, in a client of their own."""
    _as_a_new_request()
    thief = app.test_client()
    thief.set_cookie("session", copied)
    response = thief.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in")


def test_sign_out_ends_a_copy_of_the_session_cookie_too(app, signed_in_client):
    copied = _session_cookie(signed_in_client)
    assert signed_in_client.post("/sign-out").status_code == 302
    # Someone who copied the cookie before the agent signed out replays it.
    _assert_a_replayed_cookie_is_sent_to_sign_in(app, copied)


def test_an_ended_session_deletes_its_cookie_once_instead_of_refreshing_it(app, signed_in_client):
    other = app.test_client()
    _as_a_new_request()
    sign_in(other)
    _as_a_new_request()
    assert signed_in_client.post("/sign-out").status_code == 302
    _as_a_new_request()
    # The other browser's open page polls for screen-pops with the ended session.
    response = other.get("/screen-pops")
    assert response.status_code == 302
    assert "session=;" in response.headers["Set-Cookie"]
    assert other.get_cookie("session") is None
    _as_a_new_request()
    again = other.get("/screen-pops")
    assert again.status_code == 302
    assert "Set-Cookie" not in again.headers
    # The sign-in page, open in that browser, keeps its CSRF token in a new session:
    # a poll while the agent types the password leaves that session's cookie alone.
    _as_a_new_request()
    assert other.get("/sign-in").status_code == 200
    assert other.get_cookie("session") is not None
    _as_a_new_request()
    polled = other.get("/screen-pops")
    assert polled.status_code == 302
    assert "Set-Cookie" not in polled.headers


def test_sign_out_ends_the_agents_sessions_in_other_browsers(app, signed_in_client):
    other = app.test_client()
    _as_a_new_request()
    sign_in(other)
    assert other.get("/").status_code == 200
    _as_a_new_request()
    assert signed_in_client.post("/sign-out").status_code == 302
    _as_a_new_request()
    assert other.get("/").status_code == 302
    # Signing in again starts a session that works.
    sign_in(other)
    assert other.get("/").status_code == 200


def test_a_session_ends_its_lifetime_after_sign_in_however_busy(app, signed_in_client):
    lifetime = app.permanent_session_lifetime.total_seconds()
    with signed_in_client.session_transaction() as session:
        session["signed_in_at"] -= int(lifetime) - 5
    # Still inside its lifetime, and every request slides the cookie's expiry...
    _as_a_new_request()
    assert signed_in_client.get("/").status_code == 200
    with signed_in_client.session_transaction() as session:
        session["signed_in_at"] -= 10
    # ...but not the end of the session, counted from sign-in.
    _as_a_new_request()
    response = signed_in_client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in")


def test_sign_in_without_csrf_token_is_refused(client, agent):
    response = client.post("/sign-in", data={"email": AGENT_EMAIL, "password": AGENT_PASSWORD})
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)
    assert client.get("/").status_code == 302


def test_signed_in_agent_skips_the_sign_in_page(signed_in_client):
    response = signed_in_client.get("/sign-in?next=/audit")
    assert response.status_code == 302
    assert response.headers["Location"] == "/audit"


@pytest.fixture
def app_config(database_url):
    return {
        "SQLALCHEMY_DATABASE_URI": database_url,
        "TESTING": True,
        "PERMANENT_SESSION_LIFETIME": 600,
        "SESSION_COOKIE_SECURE": True,
    }


def test_session_cookie_is_http_only_lax_secure_and_expires(client, agent):
    response = _post_sign_in(client, AGENT_EMAIL, AGENT_PASSWORD)
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Secure" in cookie
    expires = datetime.strptime(
        cookie.split("Expires=")[1].split(";")[0], "%a, %d %b %Y %H:%M:%S GMT"
    )
    left = expires.replace(tzinfo=UTC) - datetime.now(UTC)
    assert 500 < left.total_seconds() <= 601


@pytest.mark.parametrize(("scheme", "secure"), [("http", False), ("https", True)])
def test_a_session_begun_over_https_gets_a_secure_cookie_whatever_the_setting(
    app, client, scheme, secure
):
    app.config["SESSION_COOKIE_SECURE"] = False
    # The sign-in page keeps its CSRF token in the session, so it sets the cookie.
    response = client.get("/sign-in", base_url=f"{scheme}://identity.example")
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("session=")
    assert ("; Secure" in cookie) is secure


def test_users_create_list_disable(runner):
    result = runner.invoke(
        args=["users", "create", "New.Agent@example.com"], input="long enough pw\nlong enough pw\n"
    )
    assert result.exit_code == 0, result.output
    assert "created agent new.agent@example.com" in result.output
    user = db.session.scalar(select(User).where(User.email == "new.agent@example.com"))
    assert user.is_active and user.password_hash.startswith("$argon2id$")
    assert "long enough pw" not in result.output

    listed = runner.invoke(args=["users", "list"])
    assert "new.agent@example.com\tactive\tlast sign-in: never" in listed.output

    disabled = runner.invoke(args=["users", "disable", "new.agent@example.com"])
    assert disabled.exit_code == 0
    db.session.expire_all()
    assert db.session.get(User, user.id).is_active is False
    assert "new.agent@example.com\tdisabled" in runner.invoke(args=["users", "list"]).output


def test_users_enable_and_set_password(app, runner, signed_in_client):
    assert signed_in_client.get("/").status_code == 200
    assert runner.invoke(args=["users", "disable", AGENT_EMAIL]).exit_code == 0
    enabled = runner.invoke(args=["users", "enable", AGENT_EMAIL.upper()])
    assert enabled.exit_code == 0, enabled.output
    assert f"enabled agent {AGENT_EMAIL}" in enabled.output
    _as_a_new_request()
    assert _post_sign_in(app.test_client(), AGENT_EMAIL, AGENT_PASSWORD).status_code == 302
    reset = runner.invoke(
        args=["users", "set-password", AGENT_EMAIL], input="a new password\na new password\n"
    )
    assert reset.exit_code == 0, reset.output
    assert f"new password set for agent {AGENT_EMAIL}" in reset.output
    assert "a new password" not in reset.output.replace("New password", "")
    # The new password works, the old one no longer does, and open sessions ended.
    _as_a_new_request()
    assert signed_in_client.get("/").status_code == 302
    _as_a_new_request()
    assert _post_sign_in(app.test_client(), AGENT_EMAIL, AGENT_PASSWORD).status_code == 422
    _as_a_new_request()
    assert _post_sign_in(app.test_client(), AGENT_EMAIL, "a new password").status_code == 302


@pytest.mark.parametrize(
    "args, stdin, message",
    [
        (["users", "create", "not-an-email"], "long enough pw\nlong enough pw\n", "not an email"),
        (["users", "create", "a@example.com"], "short\nshort\n", "at least 10 characters"),
        (["users", "create", AGENT_EMAIL], "long enough pw\nlong enough pw\n", "already exists"),
        (["users", "disable", "ghost@example.com"], "", "no agent with e-mail ghost@example.com"),
        (["users", "enable", "ghost@example.com"], "", "no agent with e-mail ghost@example.com"),
        (["users", "set-password", AGENT_EMAIL], "short\nshort\n", "at least 10 characters"),
        (
            ["users", "set-password", "ghost@example.com"],
            "long enough pw\nlong enough pw\n",
            "no agent with e-mail ghost@example.com",
        ),
    ],
)
def test_users_commands_refuse_bad_input(runner, agent, args, stdin, message):
    before = db.session.scalars(select(User.email).order_by(User.email)).all()
    result = runner.invoke(args=args, input=stdin)
    assert result.exit_code != 0
    assert message in result.output
    assert db.session.scalars(select(User.email).order_by(User.email)).all() == before


def test_users_create_asks_twice_and_refuses_a_mismatch(runner):
    result = runner.invoke(
        args=["users", "create", "x@example.com"],
        input="long enough pw\nsomething else\nlong enough pw\nlong enough pw\n",
    )
    assert result.exit_code == 0, result.output
    assert "do not match" in result.output.lower()


def test_users_list_when_empty(runner):
    assert "no agents yet" in runner.invoke(args=["users", "list"]).output


def test_sign_in_page_renders_a_form(client):
    response = client.get("/sign-in")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert 'name="email"' in html and 'name="password"' in html
    assert csrf_token_from(html)


def test_an_unknown_password_hash_profile_is_refused_at_start(app_config):
    from webapp import create_app

    with pytest.raises(ValueError, match=r"PASSWORD_HASH_PROFILE 'FAST'.*RFC_9106_LOW_MEMORY"):
        create_app({**app_config, "PASSWORD_HASH_PROFILE": "FAST"})
    with pytest.raises(ValueError, match="PASSWORD_HASH_PROFILE"):
        create_app({**app_config, "PASSWORD_HASH_PROFILE": "__doc__"})


@pytest.mark.parametrize(
    ("setting", "expected"),
    [(None, "RFC_9106_LOW_MEMORY"), ("", "RFC_9106_LOW_MEMORY"), ("CHEAPEST", "CHEAPEST")],
)
def test_password_hash_profile_comes_from_the_environment(tmp_path, setting, expected):
    # Settings are read when webapp.config is imported: a fresh interpreter sees the variable.
    env = {k: v for k, v in os.environ.items() if k != "PASSWORD_HASH_PROFILE"}
    if setting is not None:
        env["PASSWORD_HASH_PROFILE"] = setting
    env.update(
        APP_ENV="production",
        SECRET_KEY="test-only-not-secret-0123456789abcdef",
        DATABASE_URL=f"sqlite:///{tmp_path}/x.db",
    )
    script = "from webapp import create_app; print(create_app().config['PASSWORD_HASH_PROFILE'])"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == expected


@pytest.mark.parametrize(
    "body",
    [
        {"email": AGENT_EMAIL, "password": AGENT_PASSWORD},
        {"email": 5, "password": "x"},
        {"email": {"a": 1}, "password": 7},
        [1],
        "x",
    ],
)
def test_a_json_body_is_not_a_sign_in_form(client, agent, body):
    """Forms read posted form fields only: JSON signed in past the per-account limit, or 500'd."""
    token = csrf_token_from(client.get("/sign-in").get_data(as_text=True))
    response = client.post("/sign-in", json=body, headers={"X-CSRFToken": token})
    assert response.status_code == 422
    _as_a_new_request()
    assert client.get("/").status_code == 302


def test_an_uploaded_file_is_not_a_sign_in_field(client, agent):
    """A file part named "email" made the field a file: the validators answered 500."""
    from io import BytesIO

    token = csrf_token_from(client.get("/sign-in").get_data(as_text=True))
    data = {
        "csrf_token": token,
        "email": (BytesIO(AGENT_EMAIL.encode()), "email.txt"),
        "password": (BytesIO(AGENT_PASSWORD.encode()), "password.txt"),
    }
    response = client.post("/sign-in", data=data, content_type="multipart/form-data")
    assert response.status_code == 422
    _as_a_new_request()
    assert client.get("/").status_code == 302


@pytest.mark.parametrize("htmx", [True, False], ids=["htmx", "plain-form"])
def test_a_form_sent_after_the_session_ended_goes_to_sign_in_and_back(signed_in_client, htmx):
    """Not "Form expired": the session, and the token with it, ended in another tab."""
    from tests.builders import identify as post_identify

    post_identify(signed_in_client, "ann@x.io", "555")
    agent_id = db.session.scalar(select(User.id).where(User.email == AGENT_EMAIL))
    service.end_sessions(agent_id)  # signed out in another tab
    _as_a_new_request()
    # A screen-pop poll finds the session ended and clears it, its CSRF token too.
    assert signed_in_client.get("/screen-pops").status_code in (302, 401)
    _as_a_new_request()
    headers = {"Referer": "http://localhost/customers/1?order=oldest"}
    if htmx:
        headers["HX-Request"] = "true"
    response = signed_in_client.post("/customers/1/name", data={"name": "Ann"}, headers=headers)
    target = "/sign-in?next=/customers/1?order%3Doldest"
    if htmx:
        assert (response.status_code, response.headers["HX-Redirect"]) == (401, target)
    else:
        assert (response.status_code, response.headers["Location"]) == (302, target)
    # Another site's page is not where sign-in sends the agent back to.
    _as_a_new_request()
    headers["Referer"] = "http://evil.example/customers/1"
    response = signed_in_client.post("/customers/1/name", data={"name": "Ann"}, headers=headers)
    assert (response.headers.get("HX-Redirect") or response.headers["Location"]) == "/sign-in"


def test_a_signed_out_fragment_sends_the_agent_back_to_the_page_it_was_on(client):
    # htmx asked for part of a page (the next contacts); after signing in, the agent
    # goes back to the page it was on (HX-Current-URL), not to the fragment's own URL.
    headers = {"HX-Request": "true", "HX-Current-URL": "http://localhost/customers/1?order=oldest"}
    response = client.get("/customers/1/contacts?page=2", headers=headers)
    assert (response.status_code, response.headers["HX-Redirect"]) == (
        401,
        "/sign-in?next=/customers/1?order%3Doldest",
    )
    # A boosted link asks for a page: that page is the one to come back to.
    response = client.get("/audit?action=merge", headers={**headers, "HX-Boosted": "true"})
    assert response.headers["HX-Redirect"] == "/sign-in?next=/audit?action%3Dmerge"
    # Another site's page is never where sign-in leads.
    headers["HX-Current-URL"] = "http://evil.example/customers/1"
    response = client.get("/customers/1/contacts?page=2", headers=headers)
    assert response.headers["HX-Redirect"] == "/sign-in"


def test_an_expired_sign_in_form_still_says_so(client, agent):
    client.get("/sign-in")
    response = client.post(
        "/sign-in", data={"email": AGENT_EMAIL, "password": AGENT_PASSWORD, "csrf_token": "stale"}
    )
    assert response.status_code == 400
    assert "Form expired" in response.get_data(as_text=True)


def test_the_longest_session_lifetime_allowed_still_serves_the_dashboard(app_config, agent):
    # 9999999999999999999 was accepted once, and every signed-in request overflowed (500).
    longest = create_app({**app_config, "PERMANENT_SESSION_LIFETIME": "315360000"})
    client = longest.test_client()
    sign_in(client)
    response = client.get("/")
    assert response.status_code == 200
    assert AGENT_EMAIL in response.get_data(as_text=True)
    assert "Expires=" in response.headers["Set-Cookie"]


def _cookie_signed_by_a_clock(app, monkeypatch, client, ahead_s: int) -> None:
    """The agent's session cookie as a box whose clock runs ``ahead_s`` seconds ahead of
    this one signs it (every answer signs the cookie afresh)."""
    from itsdangerous import TimestampSigner

    serializer = app.session_interface.get_signing_serializer(app)
    payload = serializer.loads(client.get_cookie("session").value)
    real = TimestampSigner.get_timestamp
    with monkeypatch.context() as patched:
        patched.setattr(TimestampSigner, "get_timestamp", lambda self: real(self) + ahead_s)
        cookie = serializer.dumps(payload)
    client.set_cookie("session", cookie)


def test_a_session_cookie_from_a_box_whose_clock_runs_ahead_still_works(
    app, monkeypatch, signed_in_client
):
    """Behind a load balancer, the next request lands on a box whose clock is a few seconds
    behind the one that answered last. Flask's session refused a cookie signed "in the
    future": every such request was signed out (401 and HX-Redirect to sign-in for htmx)."""
    _cookie_signed_by_a_clock(app, monkeypatch, signed_in_client, ahead_s=8)
    _as_a_new_request()
    assert signed_in_client.get("/").status_code == 200
    _as_a_new_request()
    assert signed_in_client.get("/screen-pops", headers={"HX-Request": "true"}).status_code == 204


def test_a_session_cookie_signed_far_in_the_future_is_refused(app, monkeypatch, signed_in_client):
    # Past MAX_CLOCK_SKEW_S it is a clock gone wrong, not a box a few seconds apart.
    from webapp import MAX_CLOCK_SKEW_S

    _cookie_signed_by_a_clock(app, monkeypatch, signed_in_client, ahead_s=MAX_CLOCK_SKEW_S + 60)
    _as_a_new_request()
    response = signed_in_client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in")


def test_a_session_cookie_older_than_the_lifetime_is_still_refused(
    app, monkeypatch, signed_in_client
):
    lifetime = int(app.permanent_session_lifetime.total_seconds())
    _cookie_signed_by_a_clock(app, monkeypatch, signed_in_client, ahead_s=-(lifetime + 1))
    _as_a_new_request()
    response = signed_in_client.get("/")
    assert response.status_code == 302
    assert response.headers["Location"].startswith("/sign-in")
