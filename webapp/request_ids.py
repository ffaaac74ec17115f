"""Request ids: one per request, in the answer's X-Request-ID and on every log line it causes.

A load balancer that already tags requests sends its id in ``X-Request-ID``,
and the app keeps it when it trusts proxies (TRUSTED_PROXIES), so one id
follows a request from the proxy's log through gunicorn's access log to the
app's own lines. Otherwise the app makes one.
"""

from __future__ import annotations

import logging
import uuid

from flask import Flask, Response, current_app, g, has_request_context, request

HEADER = "X-Request-ID"
# Long enough for any proxy's format (a UUID, a trace id); short enough to log.
MAX_LENGTH = 128


def _valid(value: str) -> bool:
    return (
        0 < len(value) <= MAX_LENGTH
        and value.isascii()
        and value.isprintable()
        and (" " not in value)
    )


def _take_id() -> None:
    # Only a proxy the app trusts (TRUSTED_PROXIES) may name the request: a client
    # connecting directly could otherwise reuse another request's id in the logs.
    trusted = current_app.config["TRUSTED_PROXIES"] > 0
    sent = request.headers.get(HEADER, "") if trusted else ""
    g.request_id = sent if _valid(sent) else uuid.uuid4().hex


def _send_id(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id:
        response.headers[HEADER] = request_id
    return response


def init_request_ids(app: Flask) -> None:
    """Take or make each request's id first of all, so every later hook's log lines carry it."""
    app.before_request(_take_id)
    app.after_request(_send_id)


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every record ("-" outside a request) for the log format."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = (g.get("request_id") if has_request_context() else None) or "-"
        return True


def log_with_request_ids(level: int = logging.INFO) -> None:
    """Log to standard error, each line with the request id it belongs to."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s")
    )
    logging.basicConfig(level=level, handlers=[handler])
