"""Authentication and tenancy: every route refuses a bad key and hides other tenants' data;
no secret reaches a log."""

from __future__ import annotations

import httpx

from reliability.probes.target import Check, Target, fill_ids, operations, read_capped

# Routes anyone may call; any other route must refuse a request without a valid key.
PUBLIC_ROUTES = {"/healthz", "/readyz"}


def _sample_body(path: str, model: str) -> dict:
    job = {"model": model, "prompt": "probe", "max_tokens": 1}
    return {"/v1/jobs": job, "/v1/jobs/bulk": {"jobs": [job]}, "/v1/admin/keys": {"name": "x"}}.get(
        path, {}
    )


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
            own = fill_ids(path, t.job_a, t.key_b_id)
            body = _sample_body(path, t.model) if method == "POST" else None
            for case, headers in bad.items():
                status, _, _ = read_capped(client, method, own, headers=headers, json=body)
                out.append(Check(route, case, status == 401, str(status)))
            a = {"Authorization": f"Bearer {t.key_a}"}
            if path.startswith("/v1/admin"):
                status, _, _ = read_capped(client, method, own, headers=a, json=body)
                out.append(Check(route, "normal key on an admin route", status == 403, str(status)))
            elif "{job_id}" in path:
                other = fill_ids(path, t.job_b, t.key_b_id)
                status, _, _ = read_capped(client, method, other, headers=a, json=body)
                out.append(Check(route, "another tenant's job id", status == 404, str(status)))
            elif method == "GET":
                status, text, _ = read_capped(client, method, path, headers=a)
                leaked = [s for s in (t.job_b, t.key_b_id, t.b_marker) if s.encode() in text]
                out.append(Check(route, "no other tenant's data in the answer",
                                 status < 500 and not leaked, f"{status} {leaked or ''}"))  # fmt: skip
    return out


def log_hits(logs: dict[str, str], secrets: dict[str, str]) -> list[Check]:
    """Each secret looked for in each log: a check per (secret, log)."""
    out = []
    for source, text in logs.items():
        for name, secret in secrets.items():
            found = secret in text
            out.append(Check(f"log: {source}", f"no {name}", not found, "found" if found else ""))
    return out
