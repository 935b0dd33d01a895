"""The API under probe, the result of one probe case, and how probes reach the API."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx


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


def read_capped(
    client: httpx.Client, method: str, url: str, **kw
) -> tuple[int, bytes, httpx.Headers]:
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


def fill_ids(path: str, job_id: str, key_id: str) -> str:
    return path.replace("{job_id}", job_id).replace("{key_id}", key_id)
