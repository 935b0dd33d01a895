"""Signed webhooks: outbox, retries with one id, 410, redirects, redelivery, SSRF, pinning."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from llmq import ssrf
from llmq.db import session_scope
from llmq.keys import create_key, webhook_secret
from llmq.models import WebhookDelivery
from llmq.settings import Settings, get_settings
from tests.conftest import wait_final, wait_for
from tests.tenancy_helpers import Receiver, WebhookWorker
from workers import webhooks
from workers.webhook_policy import Step, next_step, parse_retry_after

FAST_RETRIES = {
    "LLMQ_WEBHOOK_RETRY_DELAYS_S": "1.5,1.5,1.5,1.5",
    "LLMQ_WEBHOOK_JITTER": "0.1",
    "LLMQ_WEBHOOK_SWEEP_S": "0.3",
}


def key_with_secret(webhook_url: str | None = None) -> tuple[dict[str, str], str]:
    with session_scope() as session:
        row, plain = create_key(session, f"hooks-{uuid.uuid4().hex[:6]}", webhook_url=webhook_url)
        secret = webhook_secret(row)
    return {"Authorization": f"Bearer {plain}"}, secret


@pytest.fixture(scope="module")
def webhook_worker():
    worker = WebhookWorker(FAST_RETRIES).wait_ready()
    yield worker
    worker.stop()


def wait_delivery(client, headers, job_id: str, status: str, timeout_s: float = 60) -> dict:
    def reached() -> dict | None:
        data = client.get(f"/v1/jobs/{job_id}/webhooks", headers=headers).json()["data"]
        return data[0] if data and data[0]["status"] == status else None

    return wait_for(reached, timeout_s, f"delivery of {job_id} {status}")


def cancelled_job_with_hook(client, auth) -> tuple[dict, list[WebhookDelivery]]:
    """A job cancelled while queued (nobody serves `idle`), and its outbox rows."""
    job = client.post(
        "/v1/jobs",
        json={"model": "idle", "prompt": "x", "webhook_url": "http://127.0.0.1:9/h"},
        headers=auth,
    ).json()
    assert outbox_rows(job["id"]) == []
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    return job, outbox_rows(job["id"])


def outbox_rows(job_id: str) -> list[WebhookDelivery]:
    with session_scope() as session:
        query = sa.select(WebhookDelivery).where(WebhookDelivery.job_id == uuid.UUID(job_id))
        return list(session.scalars(query))


def test_retries_carry_one_id_fresh_timestamps_and_valid_signatures(
    client, start_worker, webhook_worker
):
    start_worker("echo")
    receiver = Receiver(script=[500, 500, 503])
    headers, secret = key_with_secret()
    try:
        body = {"model": "echo", "prompt": "ping pong", "webhook_url": receiver.url}
        job = client.post("/v1/jobs", json=body, headers=headers).json()
        final = wait_final(client, headers, job["id"])
        delivery = wait_delivery(client, headers, job["id"], "delivered")
        got = receiver.wait_for(4)
    finally:
        receiver.close()
    assert len(got) == 4
    assert {r.headers["webhook-id"] for r in got} == {delivery["id"]}
    stamps = [int(r.headers["webhook-timestamp"]) for r in got]
    assert stamps == sorted(set(stamps))  # strictly increasing
    assert len({r.body for r in got}) == 1
    verifier = Webhook(secret)
    for r in got:
        event = verifier.verify(r.body, r.headers)
        assert event["type"] == "job.succeeded"
        assert event["data"]["id"] == job["id"] and event["data"] == final
    tampered = dict(got[0].headers)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(got[0].body.replace(b"ping", b"pong"), tampered)
    with pytest.raises(WebhookVerificationError):
        verifier.verify(got[0].body, tampered | {"webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationError):
        ts = str(int(tampered["webhook-timestamp"]) + 1)
        verifier.verify(got[0].body, tampered | {"webhook-timestamp": ts})
    assert [a["status_code"] for a in delivery["log"]] == [500, 500, 503, 200]
    assert delivery["attempts"] == 4


def test_gone_stops_and_redirects_are_failures_never_followed(client, start_worker, webhook_worker):
    start_worker("echo")
    gone = Receiver(script=[410])
    moved = Receiver(
        script=[302, 302, 302, 302, 302], headers_for={302: {"Location": "/elsewhere"}}
    )
    headers, _ = key_with_secret()
    try:
        a = client.post(
            "/v1/jobs",
            json={"model": "echo", "prompt": "a", "webhook_url": gone.url},
            headers=headers,
        ).json()
        b = client.post(
            "/v1/jobs",
            json={"model": "echo", "prompt": "b", "webhook_url": moved.url},
            headers=headers,
        ).json()
        gone_delivery = wait_delivery(client, headers, a["id"], "failed")
        moved_delivery = wait_delivery(client, headers, b["id"], "failed", timeout_s=90)
    finally:
        gone.close()
        moved.close()
    assert gone_delivery["attempts"] == 1 and len(gone.requests) == 1
    assert moved_delivery["attempts"] == 5  # the first attempt and four retries
    assert {r.path for r in moved.requests} == {"/hook"}  # Location never requested


def test_cancel_sends_job_cancelled_to_the_keys_default_endpoint_and_redeliver_resends(
    client, webhook_worker
):
    receiver = Receiver()
    headers, secret = key_with_secret(webhook_url=receiver.url)
    try:
        job = client.post(
            "/v1/jobs", json={"model": "idle", "prompt": "never runs"}, headers=headers
        ).json()
        client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
        first = wait_delivery(client, headers, job["id"], "delivered")
        again = client.post(f"/v1/jobs/{job['id']}/webhooks/redeliver", headers=headers)
        assert again.status_code == 202
        got = receiver.wait_for(2)
    finally:
        receiver.close()
    assert len(got) == 2
    events = [Webhook(secret).verify(r.body, r.headers) for r in got]
    assert [e["type"] for e in events] == ["job.cancelled", "job.cancelled"]
    assert {r.headers["webhook-id"] for r in got} == {first["id"]}


def test_the_outbox_row_is_written_with_the_final_state(client, auth):
    job, _ = cancelled_job_with_hook(client, auth)
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409
    rows = outbox_rows(job["id"])  # the refused second cancel wrote no second row
    assert [(r.event_type, r.url) for r in rows] == [("job.cancelled", "http://127.0.0.1:9/h")]


SSRF_URLS = [
    "http://127.0.0.1/",
    "http://localhost/",
    "http://[::1]/",
    "http://0x7f000001/",
    "http://2130706433/",
    "http://0177.0.0.1/",
    "http://10.0.0.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://224.0.0.1/",
    "file:///etc/passwd",
    "gopher://x/",
    "ftp://8.8.8.8/",
    "https://user:pw@8.8.8.8/",
    "http://8.8.8.8:22/",
]


@pytest.fixture(scope="module")
def strict_client(environment):
    from api.app import create_app

    with TestClient(create_app(Settings(webhook_allowed_networks=""))) as strict:
        yield strict


@pytest.mark.parametrize("url", SSRF_URLS)
def test_unsafe_webhook_urls_are_refused_with_422(strict_client, auth, url):
    body = {"model": "idle", "prompt": "x", "webhook_url": url}
    response = strict_client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, (url, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["errors"][0]["field"] == "webhook_url"


def test_a_public_https_url_is_accepted():
    target = ssrf.check_url("https://1.1.1.1/hooks?x=1", Settings(webhook_allowed_networks=""))
    assert target.addresses == ("1.1.1.1",) and target.path == "/hooks?x=1" and target.port == 443


def test_a_name_with_one_private_address_among_public_ones_is_refused():
    settings = Settings(webhook_allowed_networks="")
    with pytest.raises(ssrf.UnsafeUrl):
        ssrf.check_url(
            "https://mixed.example/", settings, resolve=lambda h, p: ["93.184.216.34", "10.0.0.7"]
        )
    ok = ssrf.check_url("https://pub.example/", settings, resolve=lambda h, p: ["93.184.216.34"])
    assert ok.host_header == "pub.example"


def test_the_sender_connects_to_the_checked_address_with_the_original_host():
    receiver = Receiver(body_bytes=1_000_000)
    try:
        port = receiver.server.server_address[1]
        # A name that resolves nowhere: only the pinned address can be reached.
        target = ssrf.Target("http", "hooks.invalid", port, "/hook", ("127.0.0.1",))
        settings = get_settings().model_copy(update={"webhook_max_response_bytes": 1024})
        result = webhooks.send(target, "msg_test", '{"a":1}', "whsec_" + "A" * 44, settings)
    finally:
        receiver.close()
    assert result.status_code == 200 and result.error is None
    assert receiver.requests[0].headers["host"] == f"hooks.invalid:{port}"


def test_a_slow_receiver_times_out():
    receiver = Receiver(delay_s=5)
    try:
        target = ssrf.Target(
            "http", "127.0.0.1", receiver.server.server_address[1], "/hook", ("127.0.0.1",)
        )
        settings = get_settings().model_copy(update={"webhook_timeout_s": 1.0})
        result = webhooks.send(target, "msg_slow", "{}", "whsec_" + "A" * 44, settings)
    finally:
        receiver.close()
    assert result.status_code is None and result.error == "timeout"
    assert result.duration_ms < 4000


@pytest.mark.parametrize(
    "code, attempts, rnd, retry_after, expected",
    [
        (200, 1, 0.5, None, Step("delivered")),
        (204, 3, 0.5, None, Step("delivered")),
        (410, 1, 0.5, None, Step("failed")),
        (500, 1, 0.5, None, Step("pending", 5.0)),
        (500, 1, 0.0, None, Step("pending", 4.5)),  # -10% jitter
        (500, 1, 1.0, None, Step("pending", 5.5)),  # +10% jitter
        (None, 2, 0.5, None, Step("pending", 300.0)),  # timeout / connection error
        (302, 2, 0.5, None, Step("pending", 300.0)),  # redirect: a failure
        (429, 1, 0.5, 120.0, Step("pending", 120.0)),  # Retry-After beyond the schedule
        (503, 2, 0.5, 10.0, Step("pending", 300.0)),  # the schedule is later anyway
        (500, 3, 0.5, None, Step("failed")),  # schedule exhausted
    ],
)
def test_retry_policy(code, attempts, rnd, retry_after, expected):
    assert next_step(code, attempts, [5.0, 300.0], 0.1, rnd, retry_after) == expected


def test_retry_after_accepts_seconds_and_http_dates():
    from datetime import UTC, datetime

    now = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Wed, 25 Nov 2026 12:02:00 GMT", now) == 120.0
    assert parse_retry_after("soon", now) is None


def test_the_webhook_worker_loads_no_torch():
    code = (
        "import sys, workers.webhook_app;"
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'transformers'))];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_payload_is_the_final_job_with_its_event_type(client, auth):
    job, [row] = cancelled_job_with_hook(client, auth)
    with session_scope() as session:
        payload = json.loads(webhooks.render_payload(session, row, get_settings()))
    assert payload["type"] == "job.cancelled" and payload["data"]["status"] == "cancelled"
    assert payload["data"]["id"] == job["id"] and payload["timestamp"]


@pytest.mark.parametrize("url", SSRF_URLS)
def test_the_guard_itself_refuses_each_unsafe_url(url):
    with pytest.raises(ssrf.UnsafeUrl):
        ssrf.check_url(url, Settings(webhook_allowed_networks=""))
