"""Probes on the wire: oversized headers and bodies, and slow clients, sent as raw bytes."""

from __future__ import annotations

import contextlib
import re
import select
import socket
import time
from collections.abc import Callable

import httpx

from reliability.probes.target import Check, Target, fill_ids, operations


def raw_status(port: int, data: bytes, timeout_s: float = 10) -> str:
    """Send bytes as they are; the answer's status code, or how the connection ended."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        except TimeoutError:
            return "timeout"
    return status_of(answer)


def status_of(answer: bytes) -> str:
    """The status code of a raw HTTP answer, or "closed" when there was none."""
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return match.group(1).decode() if match else "closed"


def header_checks(t: Target) -> list[Check]:
    """Huge and numerous headers are refused with 400 or 431, never a 5xx or a hang."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    cases = {
        "one 64 KiB header": b"X-Big: " + b"a" * 65536 + b"\r\n",
        "one 1 MiB header": b"X-Big: " + b"a" * 1048576 + b"\r\n",
        "a 256 KiB Authorization": b"Authorization: Bearer " + b"a" * 262144 + b"\r\n",
        "10 000 headers": b"".join(b"X-H%d: v\r\n" % i for i in range(10_000)),
    }
    out = []
    for case, headers in cases.items():
        got = raw_status(t.port, head + headers + b"\r\n")
        out.append(Check("GET /v1/models", case, got in ("400", "431"), got))
    status = httpx.get(f"{t.url}/healthz", timeout=10).status_code
    out.append(Check("GET /healthz", "still up after the header cases", status == 200, str(status)))
    return out


FORM_OPENING = b'--probe\r\nContent-Disposition: form-data; name="file"; filename="p"\r\n\r\n'


def body_kind(op: dict) -> tuple[str, bytes]:
    """The content type a route takes, and what opens a body of it (a form: its file part)."""
    if "multipart/form-data" in op.get("requestBody", {}).get("content", {}):
        return "multipart/form-data; boundary=probe", FORM_OPENING
    return "application/json", b""


def upload(
    port: int, path: str, key: str, total_bytes: int, chunked: bool, op: dict | None = None
) -> tuple[str, int]:
    """Send a body of `total_bytes` (declared, or chunked) of the type the route takes,
    watching for an early answer; returns the status (or how the connection ended) and the
    bytes sent before the answer."""
    content_type, opening = body_kind(op or {})
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total_bytes}"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: {content_type}\r\n{framing}\r\n\r\n").encode()  # fmt: skip
    if opening:
        head += b"%x\r\n%s\r\n" % (len(opening), opening) if chunked else opening
    piece = 65536
    data = b"%x\r\n%s\r\n" % (piece, b" " * piece) if chunked else b" " * piece
    sent = len(opening)
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            while sent < total_bytes:
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(data)
                sent += piece
            else:
                sock.sendall(b"0\r\n\r\n" if chunked else b"")
            answer = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return "reset", sent
        except TimeoutError:
            return "timeout", sent
    return status_of(answer), sent


def body_checks(t: Target, limits: Callable[[str], int]) -> list[Check]:
    """Every POST route: a declared, a real and a chunked body over the limit → 413 (or, on a
    route that takes no body, any non-5xx answer), answered before the whole body was sent."""
    out = []
    with httpx.Client(base_url=t.url, timeout=60) as client:
        posts = [(p, op) for m, p, op in operations(client) if m == "POST"]
    for template, op in posts:
        takes_body = "requestBody" in op
        path = fill_ids(template, t.job_a, t.key_b_id)
        route, limit = f"POST {template}", limits(path)
        total = limit + max(limit, 8 * 1_048_576)  # more than socket buffers swallow
        declared = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n"
                    f"Authorization: Bearer {t.key_a}\r\n\r\n{{}}").encode()  # fmt: skip
        got = raw_status(t.port, declared)
        out.append(Check(route, "Content-Length over the limit, short body", got == "413", got))
        for chunked in (False, True):
            got, sent = upload(t.port, path, t.key_a, total, chunked, op)
            # A route that takes no body may answer without reading it, with its own status.
            early = sent < total and (
                got == "413" or (not takes_body and got.isdigit() and int(got) < 500)
            )
            case = f"{'chunked' if chunked else 'declared'} body over the limit"
            out.append(Check(route, f"{case} ({sent} of {total} B sent)", early, got))
    return out


def slowloris_checks(t: Target, seconds: float, connections: int = 5) -> list[Check]:
    """Connections that send their headers 1 byte a second must not hold up other requests."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", t.port), timeout=5)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        socks.append(sock)
    latencies, statuses = [], []
    started = time.monotonic()
    headers = {"Authorization": f"Bearer {t.key_a}"}
    with httpx.Client(base_url=t.url, timeout=10) as client:
        while time.monotonic() - started < seconds:
            for sock in socks:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            for path in ("/healthz", "/v1/models"):
                t0 = time.monotonic()
                try:
                    statuses.append(client.get(path, headers=headers).status_code)
                except httpx.HTTPError as exc:
                    statuses.append(type(exc).__name__)
                latencies.append(time.monotonic() - t0)
            time.sleep(max(0.0, 1 - (time.monotonic() - t0)))
    dropped = sum(_closed_by_server(sock) for sock in socks)
    for sock in socks:
        sock.close()
    worst = max(latencies)
    served = all(s == 200 for s in statuses)
    return [Check("GET /healthz, /v1/models", f"{connections} slow-header connections for "
                  f"{seconds:g} s", served and worst < 2, f"{len(statuses)} requests, "
                  f"worst {worst * 1000:.0f} ms, {set(statuses)}; "
                  f"{dropped} of the slow connections closed by the server")]  # fmt: skip


def _closed_by_server(sock: socket.socket) -> bool:
    """Readable means the server answered (408, 400) or closed: it let the connection go."""
    return bool(select.select([sock], [], [], 0)[0])
