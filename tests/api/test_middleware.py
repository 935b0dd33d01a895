"""Request bodies: counted as they arrive whatever the headers say, and read only for a valid key.

The uploads go over a raw socket to a real uvicorn process, with `Transfer-Encoding: chunked`
and no `Content-Length`; the client stops sending once an answer arrives, so an answer that
comes before the body is all sent proves the API did not wait for (or hold) the rest of it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute

from api import deps
from tests.conftest import make_key
from tests.tenancy_helpers import UPLOAD_BYTES, ApiServer, chunked_upload


@pytest.fixture(scope="module")
def server(environment) -> Iterator[ApiServer]:
    server = ApiServer()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/bulk", "/v1/files"])
@pytest.mark.parametrize("authorization", [None, "Bearer llmq_wrong", "Basic abc"])
def test_no_valid_key_is_401_before_the_body_is_read(server, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    status, problem, sent = chunked_upload(server.port, path, headers)
    # /v1/files speaks OpenAI's envelope; llmq's own routes RFC 9457.
    kind = problem["error"]["code"] if path == "/v1/files" else problem["type"]
    assert status == 401 and kind.endswith("unauthorized"), problem
    assert sent < UPLOAD_BYTES // 2, sent


def test_a_chunked_body_over_the_limit_is_413_before_it_is_all_read(server):
    headers = {"Authorization": f"Bearer {make_key('chunked')}"}
    status, problem, sent = chunked_upload(server.port, "/v1/jobs", headers)
    assert status == 413, problem
    assert problem["type"] == "/problems/too-large" and problem["detail"].startswith("body exceeds")
    assert sent < UPLOAD_BYTES // 2, sent


def test_a_chunked_body_over_the_limit_is_413_in_process(client, auth):
    """The same limit with the in-process client (one chunk, no Content-Length)."""

    def body() -> Iterator[bytes]:
        yield b'{"model": "tiny", "prompt": "' + b"x" * 1_100_000 + b'"}'

    response = client.post(
        "/v1/jobs", content=body(), headers={**auth, "content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v1/jobs/bulk", "application/json"), ("/v1/files", "multipart/form-data; boundary=B")],
)
def test_no_valid_key_means_not_one_byte_is_read(client, path, content_type):
    pulled = []

    def body() -> Iterator[bytes]:
        pulled.append(1)
        yield b'{"jobs": []}'

    response = client.post(path, content=body(), headers={"content-type": content_type})
    assert response.status_code == 401 and pulled == []


def _routes(routes) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        nested = getattr(route, "original_router", None)
        if nested is not None:
            yield from _routes(nested.routes)


def test_every_route_that_needs_a_key_authenticates_before_its_body(app):
    keyed = [r for r in _routes(app.routes) if deps.needs_caller(r.dependant)]
    assert len(keyed) > 10  # the walk found the routes
    assert [r.path for r in keyed if not isinstance(r, deps.KeyedRoute)] == []
