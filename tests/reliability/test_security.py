"""Security probes (reliability/probes/) against a real API process, worker and webhook
sender: every route's auth, other tenants' ids, oversized headers and bodies, slow clients,
injection strings, and no secret or prompt in any log."""

from __future__ import annotations

import os

import pytest

from reliability import probes, security
from tests.conftest import WorkerProcess
from tests.tenancy_helpers import ApiServer, Receiver, WebhookWorker

SLOW_CLIENT_S = 3


@pytest.fixture(scope="module")
def probed(environment) -> tuple[dict[str, list[probes.Check]], list[probes.Check]]:
    from llmq.db import session_scope
    from llmq.keys import create_key

    worker = WorkerProcess("echo").wait_ready()
    sender = WebhookWorker().wait_ready()
    server = ApiServer().wait_ready()
    receiver = Receiver()
    try:
        with session_scope() as session:
            admin_key = create_key(session, "security-admin", is_admin=True)[1]
        target, hidden = security.prepare(server.url, admin_key, receiver.url, dict(os.environ))
        checks = security.probe_all(target, security.body_limit, SLOW_CLIENT_S)
    finally:
        receiver.close()
        for proc in (server, sender, worker):
            proc.stop()
    logs = {
        name: proc.log_path.read_text(errors="replace")
        for name, proc in (("api", server), ("worker", worker), ("webhook sender", sender))
    }
    hidden |= {"LLMQ_SECRET_KEY": os.environ["LLMQ_SECRET_KEY"]}
    hidden |= {f"prompt {m}": m for m in target.markers}
    return checks, probes.log_hits(logs, hidden)


def failed(checks: list[probes.Check]) -> list[probes.Check]:
    return [c for c in checks if not c.ok]


def test_every_route_refuses_bad_keys_and_other_tenants(probed):
    checks = probed[0]["auth"]
    routes = {c.route for c in checks}
    assert {"GET /v1/jobs/{job_id}", "POST /v1/admin/keys", "GET /healthz"} <= routes
    assert failed(checks) == []


def test_oversized_headers_are_refused(probed):
    assert failed(probed[0]["headers"]) == []


def test_oversized_bodies_are_refused(probed):
    assert failed(probed[0]["bodies"]) == []


def test_chunked_bodies_over_the_limit_are_refused_early(probed):
    assert [c for c in failed(probed[0]["bodies"]) if c.case.startswith("chunked")] == []


def test_slow_clients_do_not_block_others(probed):
    assert failed(probed[0]["slow clients"]) == []


def test_injection_strings_are_kept_verbatim_or_refused(probed):
    checks = probed[0]["injection"]
    assert any(c.got.startswith("202 succeeded") for c in checks)  # some were stored and run
    assert failed(checks) == []


def test_lone_surrogates_are_refused_with_a_4xx(probed):
    checks = [c for c in probed[0]["injection"] if "lone surrogate" in c.case]
    assert len(checks) >= 6  # every text field of the submit body
    assert failed(checks) == []


def test_no_key_secret_or_prompt_reaches_a_log(probed):
    checks = probed[1]
    assert {c.route for c in checks} == {"log: api", "log: worker", "log: webhook sender"}
    assert failed(checks) == []
