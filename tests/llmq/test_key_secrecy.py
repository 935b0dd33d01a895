"""The full API key and the webhook secret never reach the database, logs or task messages."""

from __future__ import annotations

import subprocess

import httpx
from sqlalchemy.engine import make_url

from tests.conftest import DATABASE_URL
from tests.tenancy_helpers import ApiServer, Receiver, WebhookWorker, redis_values_containing


def test_the_full_key_appears_nowhere(client, start_worker):
    server = ApiServer().wait_ready()
    worker = start_worker("echo")
    sender = WebhookWorker().wait_ready()
    receiver = Receiver()
    try:
        admin_key = None
        from llmq.db import session_scope
        from llmq.keys import create_key

        with session_scope() as session:
            _, admin_key = create_key(session, "secrecy-admin", is_admin=True)
        made = httpx.post(
            f"{server.url}/v1/admin/keys",
            json={"name": "secrecy", "webhook_url": receiver.url},
            headers={"Authorization": f"Bearer {admin_key}"},
            timeout=30,
        ).json()
        plain, secret = made["key"], made["webhook_secret"]
        headers = {"Authorization": f"Bearer {plain}", "Idempotency-Key": "secrecy-1"}
        done = httpx.post(
            f"{server.url}/v1/jobs",
            json={"model": "echo", "prompt": "hi"},
            headers=headers,
            timeout=30,
        ).json()
        httpx.get(
            f"{server.url}/v1/jobs/{done['id']}", params={"wait": 30}, headers=headers, timeout=60
        )
        # One job stays queued, so its message is still in Redis when we look.
        queued = httpx.post(f"{server.url}/v1/jobs", json={"model": "idle", "prompt": "wait"},
                            headers={"Authorization": f"Bearer {plain}"}, timeout=30).json()  # fmt: skip
        receiver.wait_for(1, timeout_s=30)
        url = make_url(DATABASE_URL)
        dump = subprocess.run(
            ["pg_dump", "-h", url.host, "-p", str(url.port or 5432), "-U", url.username, url.database],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        logs = server.output() + worker.output() + sender.output()
    finally:
        receiver.close()
        sender.stop()
        server.stop()
    assert len(receiver.requests) == 1
    assert "secrecy" in dump  # the dump is real and holds the key's row
    # The scan does see task messages (the queued job's id is in its message's args).
    assert any("llmq.model.idle" in k for k in redis_values_containing(queued["id"]))
    for needle in (plain, secret, secret.removeprefix("whsec_")):
        assert needle not in dump
        assert needle not in logs
        assert redis_values_containing(needle) == []
