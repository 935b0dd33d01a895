"""Injection strings in every text field and query parameter: stored verbatim or refused."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from reliability.probes.target import Check, Target, fill_ids, operations, read_capped

INJECTIONS = {
    "sql": "'; DROP TABLE jobs; -- ' OR '1'='1",
    "shell": "$(touch /tmp/llmq-pwned) `id` | cat /etc/passwd; rm -rf /",
    "template": "{{7*7}} ${7*7} <%= 7*7 %> {% print(1) %} #{7*7}",
    "crlf": "ok\r\nX-Injected: 1\r\n\r\n<html>",
    "nul": "before\x00after",
    "unicode": "\u202eevil\u200b\u0301 " + "\U0001d518" * 100_000,
}


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
                    filled = fill_ids(path, t.job_a, t.key_b_id)
                    status, _, _ = read_capped(
                        client, "GET", filled, params={param["name"]: text[:500]}
                    )
                    out.append(Check(f"GET {path}", f"?{param['name']}=: {name}", status < 500,
                                     str(status)))  # fmt: skip
    return out
