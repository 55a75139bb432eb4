"""The OpenAPI document lists the problem responses routes give; 405 names every method.

That each status a route really answered is in the document is checked by the
authorization matrix (test_authorization_matrix.py), which calls every route.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Api

PROBLEM = "application/problem+json"


@pytest.fixture
async def document(api: Api) -> dict[str, Any]:
    r = await api.client.get("/openapi.json")
    assert r.status_code == 200
    return dict(r.json())


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


# The health checks answer their own JSON, which probes and people read alike.
HEALTH_BODIES = {("/health/ready", "503"), ("/health/live", "503")}


async def test_every_error_response_is_a_problem_document(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400 or (path, status) in HEALTH_BODIES:
                continue
            assert list(response.get("content", {})) == [PROBLEM], (method, path, status)
            schema = response["content"][PROBLEM]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        (
            "PATCH",
            "/v1/cases/{case_id}",
            {400, 401, 403, 404, 409, 412, 413, 415, 422, 428, 429, 503},
        ),
        ("POST", "/v1/cases/{case_id}/assignees", {401, 403, 404, 409, 412, 413, 415, 429}),
        ("GET", "/v1/cases", {400, 401, 403, 422, 429, 503}),
        ("POST", "/v1/users", {401, 403, 409, 413, 415, 422, 429, 503}),
        ("GET", "/v1/users/me", {401, 404, 429, 503}),
        ("POST", "/v1/tokens", {401, 403, 413, 415, 422, 429, 503}),
        ("PUT", "/v1/admin/limits/{tier}", {401, 403, 404, 409, 422, 429, 503}),
        ("POST", "/v1/admin/jobs/requeue", {401, 403, 404, 422}),
    ],
)
async def test_routes_list_the_problems_they_give(
    document: dict[str, Any], method: str, path: str, statuses: set[int]
) -> None:
    listed = {int(s) for s in document["paths"][path][method.lower()]["responses"]}
    assert statuses <= listed, sorted(statuses - listed)


async def test_health_and_metrics_are_never_limited(document: dict[str, Any]) -> None:
    for path in ("/health/live", "/health/ready", "/metrics"):
        listed = set(document["paths"][path]["get"]["responses"])
        assert not listed & {"401", "429"}, path
    me = document["paths"]["/v1/users/me"]["get"]["responses"]
    assert "403" not in me  # it needs a token, not a permission


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/v1/cases", "GET, POST"),
        ("DELETE", "/v1/cases/1", "GET, PATCH"),
        ("GET", "/v1/tokens/1", "DELETE"),
        ("POST", "/v1/roles/1", "PUT"),
    ],
)
async def test_405_lists_every_allowed_method(
    api: Api, method: str, path: str, allowed: str
) -> None:
    r = await api.client.request(method, path, headers=api.auth())
    assert r.status_code == 405
    assert r.headers["allow"] == allowed
    assert r.headers["content-type"] == PROBLEM
    assert allowed in r.json()["detail"]
