"""One webhook attempt: a hard deadline, a fenced outcome, an unreadable secret, redelivery limits.

No webhook worker runs here: each test drives `workers.webhooks` itself, against real local
receivers, Postgres and Redis.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from llmq import crypto, outbox, ssrf
from llmq.db import session_scope
from llmq.keys import create_key
from llmq.models import ApiKey, WebhookDelivery
from llmq.settings import Settings, get_settings
from tests.conftest import make_key, wait_for
from tests.tenancy_helpers import Receiver
from workers import webhooks

DEADLINE_S = 1.0
MARGIN_S = 2.0  # loop start-up, cancellation and a loaded machine; the drips below last 10 s+


class Dripper:
    """A raw HTTP receiver: reads the request, sends `fast` at once, then `slow` byte by byte.

    With nothing to send it holds the connection open without a word until closed.
    """

    def __init__(self, fast: bytes = b"", slow: bytes = b"", every_s: float = 0.15):
        self.fast, self.slow, self.every_s = fast, slow, every_s
        self.stopped = threading.Event()
        self.hung_up = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.recv(65_536)
            conn.sendall(self.fast)
            for i in range(len(self.slow)):
                if not self._pause(conn):
                    return
                conn.sendall(self.slow[i : i + 1])
            while self._pause(conn):
                pass

    def _pause(self, conn: socket.socket) -> bool:
        """Wait one drip interval; False once the sender has hung up or the test is over."""
        readable, _, _ = select.select([conn], [], [], self.every_s)
        if readable and conn.recv(65_536) == b"":
            self.hung_up.set()
            return False
        return not self.stopped.is_set()

    def target(self) -> ssrf.Target:
        return ssrf.Target("http", "127.0.0.1", self.port, "/hook", ("127.0.0.1",))

    def close(self) -> None:
        self.stopped.set()
        self.server.close()


HEADERS_DRIP = (
    Dripper,
    {"slow": b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Pad: " + b"a" * 50 + b"\r\n\r\n"},
)
BODY_DRIP = (
    Dripper,
    {
        "fast": b"HTTP/1.1 200 OK\r\nContent-Length: 80\r\n\r\n",
        "slow": b"x" * 80,
    },
)
SILENT = Dripper, {}


def deadline_settings() -> Settings:
    return get_settings().model_copy(update={"webhook_timeout_s": DEADLINE_S})


@pytest.mark.parametrize(
    "kind", [HEADERS_DRIP, BODY_DRIP, SILENT], ids=["headers-drip", "body-drip", "silent"]
)
def test_an_attempt_ends_at_its_deadline_as_a_timeout(kind):
    """A receiver that drips its answer (or never answers) cannot hold a sender past the deadline."""
    factory, parts = kind
    receiver = factory(**parts)
    try:
        started = time.monotonic()
        result = webhooks.send(
            receiver.target(), "msg_drip", "{}", "whsec_" + "A" * 44, deadline_settings()
        )
        elapsed_s = time.monotonic() - started
        wait_for(receiver.hung_up.is_set, timeout_s=10, what="the sender to hang up")
    finally:
        receiver.close()
    assert (result.status_code, result.error) == (None, "timeout")
    assert elapsed_s < DEADLINE_S + MARGIN_S


def cancelled_job_with_webhook(client, headers, url: str) -> tuple[str, str]:
    """A job that ended (cancelled before any worker took it) with one outbox row."""
    body = {"model": "idle", "prompt": "x", "webhook_url": url}
    job = client.post("/v1/jobs", json=body, headers=headers).json()
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers).status_code == 200
    return job["id"], outbox.delivery_id(uuid.UUID(job["id"]))


def test_a_dripping_receiver_is_logged_as_a_timeout_and_retried(client, auth):
    receiver = Dripper(**BODY_DRIP[1])
    try:
        job_id, delivery_id = cancelled_job_with_webhook(client, auth, receiver.url)
        assert webhooks.deliver_once(delivery_id, deadline_settings()) == "pending"
    finally:
        receiver.close()
    delivery = client.get(f"/v1/jobs/{job_id}/webhooks", headers=auth).json()["data"][0]
    assert delivery["status"] == "pending" and delivery["next_attempt_at"]
    assert [(a["status_code"], a["error"]) for a in delivery["log"]] == [(None, "timeout")]


def test_a_stale_attempt_cannot_overwrite_a_newer_one(client, auth):
    """Attempt 1's lease ran out and attempt 2 was sent; attempt 1 finishing late changes nothing."""
    settings = get_settings()
    job_id, delivery_id = cancelled_job_with_webhook(client, auth, "http://127.0.0.1:9/h")
    first = webhooks.claim(delivery_id, settings)
    with session_scope() as session:
        session.execute(
            sa.update(WebhookDelivery)
            .where(WebhookDelivery.id == delivery_id)
            .values(lease_expires_at=sa.func.now() - sa.text("interval '1 second'"))
        )
        webhooks.due_deliveries(session)
    second = webhooks.claim(delivery_id, settings)
    assert (first.attempt, second.attempt) == (1, 2)

    now = datetime.now(UTC)
    late = webhooks.AttemptResult(500, None, None, 30_000)
    assert not webhooks.record(first, now, late, webhooks.Step("pending", 5.0))
    ok = webhooks.AttemptResult(200, None, None, 12)
    assert webhooks.record(second, now, ok, webhooks.Step("delivered"))

    delivery = client.get(f"/v1/jobs/{job_id}/webhooks", headers=auth).json()["data"][0]
    assert (delivery["status"], delivery["last_status_code"], delivery["attempts"]) == (
        "delivered",
        200,
        2,
    )
    assert sorted((a["attempt"], a["status_code"]) for a in delivery["log"]) == [(1, 500), (2, 200)]


def failed_attempts() -> float:
    return REGISTRY.get_sample_value("llmq_webhook_attempts_total", {"outcome": "failed"}) or 0.0


def test_an_undecryptable_secret_fails_the_delivery_once_and_visibly(client):
    receiver = Receiver()
    with session_scope() as session:
        row, plain = create_key(session, f"stale-secret-{uuid.uuid4().hex[:6]}")
        other = Settings(secret_key=Fernet.generate_key().decode())
        row.webhook_secret_enc = crypto.encrypt("whsec_" + "B" * 44, other)
    headers = {"Authorization": f"Bearer {plain}"}
    before = failed_attempts()
    try:
        job_id, delivery_id = cancelled_job_with_webhook(client, headers, receiver.url)
        assert webhooks.deliver_once(delivery_id, get_settings()) == "failed"
    finally:
        receiver.close()
    assert receiver.requests == []
    delivery = client.get(f"/v1/jobs/{job_id}/webhooks", headers=headers).json()["data"][0]
    assert delivery["status"] == "failed" and delivery["attempts"] == 1
    assert delivery["last_error"] == "secret cannot be decrypted"
    assert [(a["attempt"], a["error"]) for a in delivery["log"]] == [
        (1, "secret cannot be decrypted")
    ]
    assert failed_attempts() == before + 1
    with session_scope() as session:
        assert delivery_id not in webhooks.due_deliveries(session)
        assert session.get(ApiKey, row.id) is not None


@pytest.fixture(scope="module")
def limited_client(environment):
    from api.app import create_app

    with TestClient(
        create_app(get_settings().model_copy(update={"webhook_redeliver_per_min": 2}))
    ) as c:
        yield c


def test_redeliver_is_rate_limited_per_key(limited_client):
    headers = {"Authorization": f"Bearer {make_key('redeliver')}"}
    other = {"Authorization": f"Bearer {make_key('redeliver-other')}"}
    job_id, _ = cancelled_job_with_webhook(limited_client, headers, "http://127.0.0.1:9/h")
    other_job, _ = cancelled_job_with_webhook(limited_client, other, "http://127.0.0.1:9/h")
    url = f"/v1/jobs/{job_id}/webhooks/redeliver"
    answers = [limited_client.post(url, headers=headers) for _ in range(3)]
    assert [a.status_code for a in answers] == [202, 202, 429]
    assert answers[0].headers["ratelimit-policy"] == '"redeliver";q=2;w=60'
    refused = answers[2]
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["status"] == 429
    assert "redeliver" in refused.json()["violated-policies"]
    again = limited_client.post(f"/v1/jobs/{other_job}/webhooks/redeliver", headers=other)
    assert again.status_code == 202
