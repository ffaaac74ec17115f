"""Every answer carries a request id, and so does every log line the request causes."""

from __future__ import annotations

import logging
import re

import pytest

from webapp.request_ids import RequestIdFilter


def test_a_request_without_an_id_gets_one_of_its_own(client):
    first = client.get("/healthz").headers["X-Request-ID"]
    second = client.get("/healthz").headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second


def test_the_id_a_trusted_proxy_sent_is_kept_and_a_clients_is_not(app, client):
    sent = "lb-7f3a9c21-0001"
    # No proxy in front (TRUSTED_PROXIES=0): a client may not name its own request.
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    app.config["TRUSTED_PROXIES"] = 1
    response = client.post("/identify", json={"email": 5}, headers={"X-Request-ID": sent})
    assert response.status_code == 400
    assert response.headers["X-Request-ID"] == sent


@pytest.mark.parametrize("sent", ["", "has space", "x" * 129, "naïve", "tab\there"])
def test_an_id_unfit_for_a_log_line_is_replaced(app, client, sent):
    app.config["TRUSTED_PROXIES"] = 1
    response = client.get("/healthz", headers={"X-Request-ID": sent})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_log_lines_carry_the_request_id(app, client, api_key, caplog):
    app.config["TRUSTED_PROXIES"] = 1
    caplog.handler.addFilter(RequestIdFilter())
    caplog.set_level(logging.INFO, logger="webapp")
    headers = {"X-Request-ID": "call-42"}
    client.post("/calls/incoming", json={"phoneNumber": "+44 20 7946 0321"}, headers=headers)
    (line,) = [r for r in caplog.records if "incoming call" in r.getMessage()]
    assert line.request_id == "call-42"
    # Outside a request there is none.
    logging.getLogger("webapp").info("between requests")
    assert caplog.records[-1].request_id == "-"
