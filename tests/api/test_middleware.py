"""Request bodies: counted as they arrive whatever the headers say, and read only for a valid key.

The uploads go over a raw socket to a real uvicorn process, with `Transfer-Encoding: chunked`
and no `Content-Length`; the client stops sending once an answer arrives, so an answer that
comes before the body is all sent proves the API did not wait for (or hold) the rest of it.
"""

from __future__ import annotations

import json
import select
import socket
from collections.abc import Iterator

import pytest
from fastapi.routing import APIRoute

from api import deps
from tests.conftest import make_key
from tests.tenancy_helpers import ApiServer

# Far past every limit, and well past what the kernel's socket buffers can hold in flight
# (tcp_rmem may grow to 32 MiB), so an answer before half of it is sent came early.
UPLOAD_BYTES = 128 * 1_048_576
CHUNK = b"x" * 65_536


@pytest.fixture(scope="module")
def server(environment) -> Iterator[ApiServer]:
    server = ApiServer()
    try:
        yield server.wait_ready()
    finally:
        server.stop()


def chunked_upload(port: int, path: str, headers: dict[str, str]) -> tuple[int, dict, int]:
    """POST a chunked JSON body of up to UPLOAD_BYTES; returns (status, problem, bytes sent)."""
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += "Transfer-Encoding: chunked\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    frame = b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK)
    opening = b'{"model": "parked", "prompt": "'
    closing = b'"}'
    outgoing = bytearray(head.encode() + b"%x\r\n%s\r\n" % (len(opening), opening))
    sent, queued, answer = 0, len(outgoing), b""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.setblocking(False)
        while True:
            if not outgoing and queued < UPLOAD_BYTES:
                outgoing += frame
                queued += len(frame)
                if queued >= UPLOAD_BYTES:
                    outgoing += b"%x\r\n%s\r\n0\r\n\r\n" % (len(closing), closing)
            readable, writable, _ = select.select([sock], [sock] if outgoing else [], [], 60)
            if not readable and not writable:
                raise TimeoutError("no answer")
            if readable:
                data = sock.recv(1_048_576)
                answer += data
                if not data or _complete(answer):
                    break
            elif writable:
                n = sock.send(outgoing)
                del outgoing[:n]
                sent += n
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    return int(head_bytes.split()[1]), json.loads(body), sent


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/jobs/bulk"])
@pytest.mark.parametrize("authorization", [None, "Bearer llmq_wrong", "Basic abc"])
def test_no_valid_key_is_401_before_the_body_is_read(server, path, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    status, problem, sent = chunked_upload(server.port, path, headers)
    assert status == 401 and problem["type"] == "/problems/unauthorized", problem
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


def test_no_valid_key_means_not_one_byte_is_read(client):
    pulled = []

    def body() -> Iterator[bytes]:
        pulled.append(1)
        yield b'{"jobs": []}'

    response = client.post(
        "/v1/jobs/bulk", content=body(), headers={"content-type": "application/json"}
    )
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
