"""A request with too many or too large headers is a 431 before any route: problem+json, or
OpenAI's envelope on an OpenAI route."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Big": "a" * 65_536},
        {f"X-H{i}": "v" for i in range(500)},
    ],
    ids=["one huge header", "many headers"],
)
def test_oversized_headers_are_refused(client, auth, headers):
    response = client.get("/v1/jobs", headers={**auth, **headers})
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/problem+json"
    assert "header" in response.json()["detail"]
    response = client.get("/v1/models", headers={**auth, **headers})
    assert response.status_code == 431
    assert response.headers["content-type"] == "application/json"
    assert "header" in response.json()["error"]["message"]


def test_ordinary_headers_pass(client, auth):
    response = client.get("/v1/models", headers={**auth, "X-Trace": "t" * 1000})
    assert response.status_code == 200
