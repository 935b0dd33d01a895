"""Security probes against a running API: each returns `Check`s, one per request or case.

The routes come from the server's own OpenAPI document, so a route added later is probed
without a change here. Every probe is bounded in count and time and talks to loopback only.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

# Routes anyone may call; any other route must refuse a request without a valid key.
PUBLIC_ROUTES = {"/healthz", "/readyz"}
INJECTIONS = {
    "sql": "'; DROP TABLE jobs; -- ' OR '1'='1",
    "shell": "$(touch /tmp/llmq-pwned) `id` | cat /etc/passwd; rm -rf /",
    "template": "{{7*7}} ${7*7} <%= 7*7 %> {% print(1) %} #{7*7}",
    "crlf": "ok\r\nX-Injected: 1\r\n\r\n<html>",
    "nul": "before\x00after",
    "unicode": "\u202eevil\u200b\u0301 " + "\U0001d518" * 100_000,
}


@dataclass
class Target:
    """A running API and what the probes need: keys of two tenants and one job each."""

    url: str
    admin_key: str
    key_a: str
    key_b: str
    revoked_key: str
    job_a: str
    job_b: str
    key_b_id: str
    b_marker: str  # text only tenant B's job holds
    model: str = "echo"
    markers: list[str] = field(default_factory=list)  # prompt texts sent, to look for in logs

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 80


@dataclass
class Check:
    route: str
    case: str
    ok: bool
    got: str


def _get(client: httpx.Client, method: str, url: str, **kw) -> tuple[int, bytes, httpx.Headers]:
    """One request; reads at most 64 KiB of the answer (an event stream never ends)."""
    with client.stream(method, url, **kw) as response:
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > 65536 or response.headers.get("content-type", "").startswith(
                "text/event-stream"
            ):
                break
        return response.status_code, body, response.headers


def operations(client: httpx.Client) -> list[tuple[str, str, dict]]:
    """(method, path template, operation) for every route in the server's OpenAPI."""
    spec = client.get("/openapi.json").json()
    return [
        (method.upper(), path, op)
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    ]


def _sample_body(path: str, model: str) -> dict:
    job = {"model": model, "prompt": "probe", "max_tokens": 1}
    return {"/v1/jobs": job, "/v1/jobs/bulk": {"jobs": [job]}, "/v1/admin/keys": {"name": "x"}}.get(
        path, {}
    )


def _fill(path: str, job_id: str, key_id: str) -> str:
    return path.replace("{job_id}", job_id).replace("{key_id}", key_id)


def auth_checks(t: Target) -> list[Check]:
    """Every route: no key, wrong scheme, malformed, revoked key → 401; another tenant's ids
    → 404; a normal key on an admin route → 403; lists never show another tenant's data."""
    out = []
    bad = {
        "no key": {},
        "wrong scheme": {"Authorization": f"Basic {t.key_a}"},
        "malformed key": {"Authorization": "Bearer llmq_" + "x" * 38},
        "revoked key": {"Authorization": f"Bearer {t.revoked_key}"},
    }
    with httpx.Client(base_url=t.url, timeout=15) as client:
        for method, path, op in operations(client):
            route = f"{method} {path}"
            if not op.get("security"):
                out.append(Check(route, "public route is on the public list",
                                 path in PUBLIC_ROUTES or path.startswith(("/docs", "/redoc", "/openapi")),
                                 "no auth"))  # fmt: skip
                continue
            own = _fill(path, t.job_a, t.key_b_id)
            body = _sample_body(path, t.model) if method == "POST" else None
            for case, headers in bad.items():
                status, _, _ = _get(client, method, own, headers=headers, json=body)
                out.append(Check(route, case, status == 401, str(status)))
            a = {"Authorization": f"Bearer {t.key_a}"}
            if path.startswith("/v1/admin"):
                status, _, _ = _get(client, method, own, headers=a, json=body)
                out.append(Check(route, "normal key on an admin route", status == 403, str(status)))
            elif "{job_id}" in path:
                other = _fill(path, t.job_b, t.key_b_id)
                status, _, _ = _get(client, method, other, headers=a, json=body)
                out.append(Check(route, "another tenant's job id", status == 404, str(status)))
            elif method == "GET":
                status, text, _ = _get(client, method, path, headers=a)
                leaked = [s for s in (t.job_b, t.key_b_id, t.b_marker) if s.encode() in text]
                out.append(Check(route, "no other tenant's data in the answer",
                                 status < 500 and not leaked, f"{status} {leaked or ''}"))  # fmt: skip
    return out


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


def upload(port: int, path: str, key: str, total_bytes: int, chunked: bool) -> tuple[str, int]:
    """Send a body of `total_bytes` (declared, or chunked), watching for an early answer;
    returns the status (or how the connection ended) and the bytes sent before the answer."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {total_bytes}"
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\n{framing}\r\n\r\n").encode()  # fmt: skip
    piece = 65536
    data = b"%x\r\n%s\r\n" % (piece, b" " * piece) if chunked else b" " * piece
    sent = 0
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
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return (match.group(1).decode() if match else "closed"), sent


def body_checks(t: Target, limits: Callable[[str], int]) -> list[Check]:
    """Every POST route: a declared, a real and a chunked body over the limit → 413 (or, on a
    route that takes no body, any non-5xx answer), answered before the whole body was sent."""
    out = []
    with httpx.Client(base_url=t.url, timeout=60) as client:
        posts = [(p, "requestBody" in op) for m, p, op in operations(client) if m == "POST"]
    for template, takes_body in posts:
        path = _fill(template, t.job_a, t.key_b_id)
        route, limit = f"POST {template}", limits(path)
        total = limit + max(limit, 8 * 1_048_576)  # more than socket buffers swallow
        declared = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n"
                    f"Authorization: Bearer {t.key_a}\r\n\r\n{{}}").encode()  # fmt: skip
        got = raw_status(t.port, declared)
        out.append(Check(route, "Content-Length over the limit, short body", got == "413", got))
        for chunked in (False, True):
            got, sent = upload(t.port, path, t.key_a, total, chunked)
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


def _submit_cases(
    model: str, marker: str, strings: dict[str, str] = INJECTIONS
) -> dict[str, tuple[dict, dict]]:
    """(body, headers) per injection case, each in one text field of the submit body."""
    cases: dict[str, tuple[dict, dict]] = {}
    for name, text in strings.items():
        tagged = f"{marker}-{name} {text}"
        base = {"model": model, "prompt": f"{marker}-{name} plain", "max_tokens": 8}
        cases[f"prompt: {name}"] = (dict(base, prompt=tagged), {})
        cases[f"messages.content: {name}"] = (
            dict({k: v for k, v in base.items() if k != "prompt"},
                 messages=[{"role": "user", "content": tagged}]), {},
        )  # fmt: skip
        cases[f"stop: {name}"] = (dict(base, stop=[text[:200]]), {})
        cases[f"metadata value: {name}"] = (dict(base, metadata={"k": text[:512]}), {})
        cases[f"metadata key: {name}"] = (dict(base, metadata={text[:64]: "v"}), {})
        cases[f"model: {name}"] = (dict(base, model=text[:200]), {})
        cases[f"webhook_url: {name}"] = (
            dict(base, webhook_url=f"http://127.0.0.1/{text[:500]}"),
            {},
        )
        if text.isprintable() and len(text) < 200:
            cases[f"Idempotency-Key: {name}"] = (base, {"Idempotency-Key": text})
    return cases


def _verbatim(sent: dict, job: dict) -> str:
    """'' when what came back matches what was sent, else what differs."""
    if job.get("metadata") != sent.get("metadata", {}):
        return "metadata changed"
    source = sent.get("prompt") or (sent.get("messages") or [{}])[-1].get("content", "")
    if job["status"] == "succeeded":
        expected = " ".join(source.split())  # the echo engine's reply: the prompt's words
        text = job["output"]["text"]
        if not text or not expected.startswith(text):
            return "output is not the prompt's words"
    elif job["status"] == "failed" and (job.get("error") or {}).get("code") != (
        "context_length_exceeded"
    ):
        return f"job failed: {job.get('error')}"
    return ""


def injection_checks(t: Target) -> list[Check]:
    """Injection strings in every text field of the submit body, and lone surrogates: stored
    and returned verbatim, or refused with a 4xx; never a 5xx or a header of our making."""
    marker = f"pm{uuid.uuid4().hex[:12]}"
    t.markers.append(marker)
    headers = {"Authorization": f"Bearer {t.key_a}"}
    out = []

    def one(item: tuple[str, tuple[dict, dict]]) -> Check:
        try:
            return submit(item)
        except httpx.HTTPError as exc:  # the server dropped the connection
            return Check("POST /v1/jobs", item[0], False, type(exc).__name__)

    def submit(item: tuple[str, tuple[dict, dict]]) -> Check:
        case, (body, extra) = item
        with httpx.Client(base_url=t.url, timeout=60, headers=headers) as client:
            r = client.post("/v1/jobs", json=body, headers=extra)
            got, ok = str(r.status_code), r.status_code < 500 and "x-injected" not in r.headers
            if r.status_code == 202:
                job = r.json()
                for _ in range(10):
                    if job["status"] not in ("queued", "running"):
                        break
                    job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
                differs = _verbatim(body, job) if job["status"] not in ("queued", "running") else ""
                got, ok = f"202 {job['status']} {differs}".strip(), ok and not differs
            return Check("POST /v1/jobs", case, ok, got)

    with ThreadPoolExecutor(4) as pool:
        out += list(pool.map(one, _submit_cases(t.model, marker).items()))
    # JSON may spell a lone surrogate (\ud800), which no UTF-8 text can hold.
    placeholder = "SURROGATE-HERE"
    lone = _submit_cases(t.model, marker, {"lone surrogate": placeholder})
    with httpx.Client(base_url=t.url, timeout=30, headers=headers) as client:
        for case, (body, extra) in lone.items():
            if extra:
                continue  # a header cannot carry one
            content = json.dumps(body).replace(placeholder, "a\\ud800b")
            try:
                got = str(
                    client.post(
                        "/v1/jobs", content=content, headers={"Content-Type": "application/json"}
                    ).status_code
                )
            except httpx.HTTPError as exc:  # the server dropped the connection
                got = type(exc).__name__
            ok = got.isdigit() and int(got) < 500
            out.append(Check("POST /v1/jobs", case, ok, got))
        gets = [(p, op) for m, p, op in operations(client) if m == "GET" and op.get("security")]
        for path, op in gets:
            for param in (p for p in op.get("parameters", []) if p["in"] == "query"):
                for name, text in INJECTIONS.items():
                    filled = _fill(path, t.job_a, t.key_b_id)
                    status, _, _ = _get(client, "GET", filled, params={param["name"]: text[:500]})
                    out.append(Check(f"GET {path}", f"?{param['name']}=: {name}", status < 500,
                                     str(status)))  # fmt: skip
    return out


def log_hits(logs: dict[str, str], secrets: dict[str, str]) -> list[Check]:
    """Each secret looked for in each log: a check per (secret, log)."""
    out = []
    for source, text in logs.items():
        for name, secret in secrets.items():
            found = secret in text
            out.append(Check(f"log: {source}", f"no {name}", not found, "found" if found else ""))
    return out
