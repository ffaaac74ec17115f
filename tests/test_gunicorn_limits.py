"""gunicorn's limits on a request's line and headers, as docs/identity.md states them.

gunicorn refuses a request past them before the app sees it, with its own HTML page
and not the API's JSON error body; the docs say where the limits lie, and that the
API's and the dashboard's own requests stay inside them.
"""

from __future__ import annotations

import socket
from urllib.parse import quote

import pytest

from tests.conftest import LiveServer

# A request line is its method, path with query, and protocol, without the line end.
REQUEST_LINE_LIMIT = 4094
# A header line with its line end; name, colon, space and value take two bytes less.
HEADER_LINE_LIMIT = 8190
HEADERS_LIMIT = 100


@pytest.fixture(scope="module")
def server(database_urls):
    live = LiveServer(database_urls["sqlite"], workers=1)
    yield live
    live.stop()


def exchange(
    server: LiveServer, target: str, headers: list[tuple[str, str]], method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    """Status, header fields and body of ``method target`` sent with exactly these headers
    (and ``Connection: close``: the body ends with the connection)."""
    lines = [f"{method} {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(raw)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body


def answer(server: LiveServer, target: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    """The status and Content-Type of ``GET target`` sent with exactly these headers."""
    status, fields, _ = exchange(server, target, headers)
    return status, fields.get("Content-Type", "")


BASE = [("Host", "identity.example"), ("Connection", "close")]


def target_of_line_length(path: str, length: int) -> str:
    """``path`` with a query padded so that its request line is ``length`` bytes long."""
    padding = length - len(f"GET {path}?pad= HTTP/1.1")
    return f"{path}?pad={'a' * padding}"


def test_a_request_line_over_4094_bytes_gets_gunicorns_414_page(server):
    at_limit = target_of_line_length("/healthz", REQUEST_LINE_LIMIT)
    assert answer(server, at_limit, BASE) == (200, "application/json")
    over = target_of_line_length("/healthz", REQUEST_LINE_LIMIT + 1)
    assert answer(server, over, BASE) == (414, "text/html")


def test_a_header_line_over_8190_bytes_or_a_101st_header_gets_gunicorns_431_page(server):
    def padded(size: int) -> list[tuple[str, str]]:
        # "X-Pad: " and the value, then the line end: ``size`` bytes in all.
        return [*BASE, ("X-Pad", "a" * (size - len("X-Pad: ") - 2))]

    assert answer(server, "/healthz", padded(HEADER_LINE_LIMIT)) == (200, "application/json")
    assert answer(server, "/healthz", padded(HEADER_LINE_LIMIT + 1)) == (431, "text/html")
    many = [*BASE, *((f"X-{n}", "1") for n in range(HEADERS_LIMIT - len(BASE)))]
    assert answer(server, "/healthz", many) == (200, "application/json")
    assert answer(server, "/healthz", [*many, ("X-One-Too-Many", "1")]) == (431, "text/html")


def test_the_longest_requests_of_the_api_and_the_dashboard_reach_the_app(server):
    # Every byte of a 254-byte e-mail percent-encoded: no client writes a longer one.
    email = "%41" * 254
    api = [
        f"/vouchers?email={email}&status=all",
        f"/api/v1/customers/lookup?email={email}&limit=50",
    ]
    for target in api:
        assert len(f"GET {target} HTTP/1.1") < 850
        # The app's own answer: 401, the server has no API key.
        assert answer(server, target, BASE) == (401, "application/json")
    # The dashboard's search takes 320 characters; four-byte ones make the longest line,
    # here with the merge dialog's "Load more" parameters and the largest ids.
    query = quote("\U0001f600" * 320)
    largest = 2**63 - 1
    target = f"/customers/{largest}/merge?q={query}&page=100&upto={largest}"
    assert len(f"GET {target} HTTP/1.1") < 3930
    # The app's own answer: the sign-in page for a browser without a session.
    assert answer(server, target, BASE)[0] == 302


EMOJI = "\U0001f600"


def escaped_query_of_line_length(path: str, length: int) -> str:
    """``path`` with a query of escapes (``%25``) padded to a request line of ``length`` bytes."""
    room = length - len(f"GET {path}?pad= HTTP/1.1")
    return f"{path}?pad={'%25' * (room // 3)}{'a' * (room % 3)}"


@pytest.mark.parametrize(
    "target",
    [
        "/?q=" + quote(EMOJI * 320),
        "/?q=" + quote(EMOJI * 200),
        f"/customers/{2**63 - 1}/merge?q={quote(EMOJI * 320)}&page=100&upto=1",
        # The longest request line gunicorn takes, every byte of its query to escape again.
        escaped_query_of_line_length("/audit", REQUEST_LINE_LIMIT),
    ],
    ids=["search-320-emoji", "search-200-emoji", "merge-dialog", "at-the-limit"],
)
def test_a_signed_out_browser_reaches_the_sign_in_form_from_the_longest_page(server, target):
    # The page asked for went into next percent-encoded again; a search for 200 emoji
    # or more made a sign-in URL that gunicorn refused with its 414 page.
    status, fields, _ = exchange(server, target, BASE)
    assert status == 302
    sign_in = fields["Location"]
    assert sign_in.startswith("/sign-in?next=/")
    status, fields, body = exchange(server, sign_in, BASE)
    assert (status, fields["Content-Type"]) == (200, "text/html; charset=utf-8")
    assert b'id="sign-in-form"' in body
    # The form is posted back to the same URL: the app answers (no session, no token).
    status, _, body = exchange(server, sign_in, [*BASE, ("Content-Length", "0")], "POST")
    assert status == 400
    assert b"Form expired" in body
