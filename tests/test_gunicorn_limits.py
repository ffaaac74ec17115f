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


def answer(server: LiveServer, target: str, headers: list[tuple[str, str]]) -> tuple[int, str]:
    """The status and Content-Type of ``GET target`` sent with exactly these headers."""
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in headers)]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(raw)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in head[1:])
    return int(head[0].split()[1]), fields.get("Content-Type", "")


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
