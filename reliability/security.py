"""Security: probe a real API process (uvicorn, loopback) and search every log for secrets.

Every route from the API's OpenAPI is tried with no key, a malformed key, a revoked key
(`llmq keys revoke`) and another tenant's ids; then oversized headers and bodies (chunked
too), slow-header clients, and injection strings in every text field of the submit body.
Afterwards the API, worker, webhook sender and Flower logs (and Flower's task list) are
searched for the API keys, LLMQ_SECRET_KEY, the webhook secrets and the prompt texts used.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Callable

import httpx

from reliability import probes
from reliability.probes import Check, Target
from reliability.report import Figure, SuiteResult

SLOW_CLIENT_S = {"quick": 5.0, "full": 15.0}
GROUPS = ("auth", "headers", "bodies", "slow clients", "injection")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _final(client: httpx.Client, job: dict, key: str) -> dict:
    for _ in range(10):
        if job["status"] not in ("queued", "running"):
            break
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}, headers=_bearer(key)).json()
    return job


def prepare(url: str, admin_key: str, webhook_url: str, cli_env: dict[str, str]) -> tuple[Target, dict[str, str]]:  # fmt: skip
    """Two tenants with a finished job each (B's with a webhook), a key revoked with `llmq keys
    revoke`; returns the target and the secrets that must stay out of the logs."""
    made = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name in ("tenant-a", "tenant-b", "revoked"):
            body = {"name": name, "webhook_url": webhook_url}
            r = client.post("/v1/admin/keys", json=body, headers=_bearer(admin_key))
            r.raise_for_status()
            made[name] = r.json()
        argv = [sys.executable, "-m", "cli", "keys", "revoke", made["revoked"]["prefix"]]
        subprocess.run(argv, env=cli_env, check=True, capture_output=True, timeout=60)
        marker_a, marker_b = f"pa{uuid.uuid4().hex[:12]}", f"pb{uuid.uuid4().hex[:12]}"
        jobs = {}
        for tenant, marker in (("tenant-a", marker_a), ("tenant-b", marker_b)):
            key = made[tenant]["key"]
            body = {"model": "echo", "prompt": f"{marker} secret words", "max_tokens": 8}
            if tenant == "tenant-b":
                body["webhook_url"] = webhook_url
            r = client.post("/v1/jobs", json=body, headers=_bearer(key))
            r.raise_for_status()
            jobs[tenant] = _final(client, r.json(), key)["id"]
    target = Target(
        url=url,
        admin_key=admin_key,
        key_a=made["tenant-a"]["key"],
        key_b=made["tenant-b"]["key"],
        revoked_key=made["revoked"]["key"],
        job_a=jobs["tenant-a"],
        job_b=jobs["tenant-b"],
        key_b_id=made["tenant-b"]["id"],
        b_marker=marker_b,
        markers=[marker_a, marker_b],
    )
    hidden = {"admin API key": admin_key}
    for name, m in made.items():
        hidden[f"{name} API key"] = m["key"]
        hidden[f"{name} webhook secret"] = m["webhook_secret"].removeprefix("whsec_")
    return target, hidden


def probe_all(t: Target, limits: Callable[[str], int], slow_s: float) -> dict[str, list[Check]]:
    return {
        "auth": probes.auth_checks(t),
        "headers": probes.header_checks(t),
        "bodies": probes.body_checks(t, limits),
        "slow clients": probes.slowloris_checks(t, slow_s),
        "injection": probes.injection_checks(t),
    }


def body_limit(path: str) -> int:
    from api.middleware import body_limit_bytes
    from llmq.settings import get_settings

    return body_limit_bytes(get_settings(), "POST", path)


def run(quick: bool = False) -> SuiteResult:
    from bench.env import BenchEnv, api, wait_for_worker, webhook_sender, worker
    from cli.devstack import free_port
    from llmq.db import get_engine, session_scope
    from llmq.keys import create_key
    from llmq.settings import get_settings
    from reliability.procs import flower, log_text
    from reliability.receiver import CountingReceiver

    env = BenchEnv()
    extra = {
        "LLMQ_SECRET_KEY": base64.urlsafe_b64encode(os.urandom(32)).decode(),
        "LLMQ_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",  # the receiver is on loopback
    }
    env.env.update(extra)
    os.environ.update(extra)
    get_settings.cache_clear()
    get_engine.cache_clear()
    env.setup()
    flower_auth = ("ops", secrets.token_urlsafe(16))
    receiver = CountingReceiver()
    procs = {}
    try:
        port, flower_port = free_port(), free_port()
        procs["api"] = api(env, port, access_log=True)
        procs["worker"] = worker(env, "echo", loglevel="INFO")
        procs["webhook sender"] = webhook_sender(env, loglevel="INFO")
        procs["flower"] = flower(env, flower_port, flower_auth)
        wait_for_worker(env, "echo")
        with session_scope() as session:
            admin_key = create_key(session, "admin", is_admin=True)[1]
        target, hidden = prepare(f"http://127.0.0.1:{port}", admin_key, receiver.url, env.env)
        checks = probe_all(target, body_limit, SLOW_CLIENT_S["quick" if quick else "full"])
        flower_tasks = httpx.get(
            f"http://127.0.0.1:{flower_port}/api/tasks", auth=flower_auth, timeout=30
        ).text
    finally:
        for proc in procs.values():
            proc.stop()
        receiver.close()
        env.teardown()
    logs = {name: log_text(proc) for name, proc in procs.items()}
    logs["flower /api/tasks"] = flower_tasks
    hidden |= {
        "LLMQ_SECRET_KEY": extra["LLMQ_SECRET_KEY"],
        "Flower password": flower_auth[1],
        **{f"prompt {m}": m for m in target.markers},
    }
    return result(checks, probes.log_hits(logs, hidden), receiver.count)


def result(checks: dict[str, list[Check]], log_checks: list[Check], webhooks: int) -> SuiteResult:
    tried = [c for group in checks.values() for c in group]
    failed = [c for c in tried if not c.ok]
    leaks = [c for c in log_checks if not c.ok]
    routes = {c.route for c in checks["auth"]}

    def listing(items: list[Check]) -> str:
        shown = "; ".join(f"{c.route} {c.case} → {c.got}" for c in items[:8])
        return f"{len(items)}" + (f" ({shown}{'; …' if len(items) > 8 else ''})" if items else "")

    figures = [
        Figure(
            "security: routes x cases tried",
            f"{len(routes)} routes; {len(tried)} checks "
            + ", ".join(f"{g} {len(checks[g])}" for g in GROUPS),
        ),
        Figure("security: failures", listing(failed), "0", not failed),
        Figure(
            "security: secrets found in logs",
            f"{listing(leaks)} ({len({c.case for c in log_checks})} secrets x "
            f"{len({c.route for c in log_checks})} logs searched)",
            "0",
            not leaks,
        ),
    ]
    how = (
        "One API (uvicorn, info log with access log), an echo worker, a webhook sender and "
        "Flower (basic auth) on loopback; two tenant keys and a key revoked with `llmq keys "
        "revoke`. Routes from the API's OpenAPI document: each tried with no key, a Basic "
        "scheme, a malformed key and the revoked key (401), a normal key on admin routes "
        "(403), tenant B's job id with tenant A's key (404), and lists read for B's data. "
        "Headers of 64 KiB, 1 MiB, a 256 KiB Authorization and 10 000 headers; on every POST "
        "route a declared, a real and a chunked body over the limit (413 before the whole body "
        "is sent); 5 connections sending headers 1 byte a second while other requests run; "
        f"injection strings ({', '.join(probes.INJECTIONS)}) in every text field of the submit "
        "body and every query parameter, and lone surrogates. Then the logs and Flower's task "
        f"list searched for every key, secret and prompt marker. {webhooks} webhooks received."
    )
    raw = {
        "checks": {g: [vars(c) for c in cs] for g, cs in checks.items()},
        "log_hits": [vars(c) for c in leaks],
    }
    return SuiteResult("security", how, figures, raw)
