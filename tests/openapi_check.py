"""Check real API responses against the OpenAPI document the app serves."""

from __future__ import annotations

from jsonschema import Draft202012Validator


def response_schema(spec: dict, path: str, method: str, status: int) -> dict:
    """The JSON schema the OpenAPI document gives for one response."""
    operation = spec["paths"][path][method.lower()]
    response = operation["responses"][str(status)]
    if "$ref" in response:
        name = response["$ref"].rsplit("/", 1)[-1]
        response = spec["components"]["responses"][name]
    return response["content"]["application/json"]["schema"]


def assert_matches_openapi(app, path: str, method: str, response) -> None:
    """Fail unless ``response`` (a test-client response) is documented and matches its schema."""
    spec = app.extensions["openapi"]
    schema = response_schema(spec, path, method, response.status_code)
    # The whole document rides along so that "#/components/..." references resolve.
    validator = Draft202012Validator({**spec, **schema})
    errors = sorted(validator.iter_errors(response.get_json()), key=str)
    assert errors == [], [e.message for e in errors]
