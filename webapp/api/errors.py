"""One JSON error shape for the whole API: {"error": {"code", "message", "fields"}}."""

from __future__ import annotations

from flask import jsonify


class ApiError(Exception):
    """An error the API answers with its status and the JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}
        self.headers = headers or {}


def error_response(
    status: int,
    code: str,
    message: str,
    fields: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
):
    """Build the JSON error response every API failure uses."""
    response = jsonify({"error": {"code": code, "message": message, "fields": fields or {}}})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def api_error_response(exc: ApiError):
    """Render an ApiError."""
    return error_response(exc.status, exc.code, exc.message, exc.fields, exc.headers)


def unstorable_value_error() -> ApiError:
    """The answer when the database refused a value of the request (too long, out of range,
    characters it does not take) that the request's checks let through: a 400, not a 503
    "try again", since the same request would fail the same way."""
    return ApiError(
        400,
        "unstorable_value",
        "a value in the request cannot be stored (too long, out of range, or characters "
        "the database does not take); nothing was changed, and sending the same request "
        "again will not help",
    )
