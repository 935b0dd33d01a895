"""Each delivery attempt re-resolves and re-checks its host (no webhook worker runs here)."""

from __future__ import annotations

import uuid

from llmq import ssrf
from llmq.settings import get_settings
from tests.tenancy_helpers import Receiver
from workers import webhooks


def test_every_attempt_resolves_and_checks_the_host_again(client, auth, monkeypatch):
    """DNS rebinding: a name that was loopback (allowed here) at submit turns private."""
    receiver = Receiver()
    port = receiver.server.server_address[1]
    url = f"http://rebind.invalid:{port}/hook"
    answers = iter([["127.0.0.1"], ["10.0.0.5"]])
    monkeypatch.setattr(ssrf, "_resolve", lambda host, p: next(answers))
    try:
        body = {"model": "idle", "prompt": "x", "webhook_url": url}
        job = client.post("/v1/jobs", json=body, headers=auth).json()
        assert job["status"] == "queued"
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
        delivery_id = f"msg_{uuid.UUID(job['id']).hex}"
        assert webhooks.deliver_once(delivery_id, get_settings()) == "pending"
    finally:
        receiver.close()
    assert receiver.requests == []
    log = client.get(f"/v1/jobs/{job['id']}/webhooks", headers=auth).json()["data"][0]
    assert log["log"][0]["error"].startswith("refused:") and log["log"][0]["status_code"] is None
