"""Cancel: one transition, and a job's tokens given back at most once, by whoever ended it."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa

from llmq import jobs, ratelimit
from llmq.db import session_scope
from llmq.keys import Limits, create_key
from tests.conftest import REDIS_PREFIX, wait_for

# "cancel me" is 9 bytes: 9 + 8 template tokens + max_tokens 9 = 26 tokens charged.
BODY = {"model": "parked", "prompt": "cancel me", "max_tokens": 9}
CHARGED = 26


def tpm_key(tpm: int) -> tuple[uuid.UUID, dict[str, str]]:
    with session_scope() as session:
        row, plain = create_key(session, f"cancel-{uuid.uuid4().hex[:6]}", limits=Limits(tpm=tpm))
    return row.id, {"Authorization": f"Bearer {plain}"}


def tpm_tat(redis_client, key_id: uuid.UUID) -> float:
    """When the key's token rate is whole again, on Redis's clock (GCRA's stored state)."""
    return float(redis_client.hget(ratelimit.limit_key(REDIS_PREFIX, key_id, "tpm"), "tat"))


def waiting_on_a_row_lock() -> int:
    with session_scope() as session:
        return session.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )


def test_concurrent_cancels_end_the_job_once_and_give_its_tokens_back_once(client, redis_client):
    key_id, headers = tpm_key(60)  # a token is a second of the rate: refunds are easy to see
    kept, doomed = (client.post("/v1/jobs", json=BODY, headers=headers).json() for _ in range(2))
    charged = tpm_tat(redis_client, key_id)
    cancel = f"/v1/jobs/{doomed['id']}/cancel"
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.post, cancel, headers=headers) for _ in range(8)]
        answers = [future.result() for future in futures]
    assert sorted(r.status_code for r in answers) == [200] + [409] * 7
    # One refund of 26 tokens moves the rate back 26 s; a second would move it to "now".
    assert tpm_tat(redis_client, key_id) == pytest.approx(charged - CHARGED, abs=1e-3)
    again = client.post(cancel, headers=headers)
    assert again.status_code == 409
    assert tpm_tat(redis_client, key_id) == pytest.approx(charged - CHARGED, abs=1e-3)
    assert client.get(f"/v1/jobs/{kept['id']}", headers=headers).json()["status"] == "queued"


def test_a_job_claimed_while_it_is_cancelled_keeps_its_tokens_for_the_worker(client, redis_client):
    """The worker that claimed the job reconciles its tokens when its batch ends; the cancel
    must not give them back as well, as it would for a job that never ran."""
    key_id, headers = tpm_key(60)
    job = client.post("/v1/jobs", json=BODY, headers=headers).json()
    charged = redis_client.hget(ratelimit.limit_key(REDIS_PREFIX, key_id, "tpm"), "tat")
    answers: list[httpx.Response] = []
    with session_scope() as worker:  # the claim commits while the cancel waits for the row
        assert jobs.claim_jobs(worker, [uuid.UUID(job["id"])], "w", timedelta(minutes=5))
        cancel = threading.Thread(
            target=lambda: answers.append(
                client.post(f"/v1/jobs/{job['id']}/cancel", headers=headers)
            )
        )
        cancel.start()
        wait_for(waiting_on_a_row_lock, timeout_s=30, what="the cancel waiting for the claim")
    cancel.join(timeout=30)
    assert [r.status_code for r in answers] == [200]
    assert answers[0].json()["status"] == "cancelled"
    assert redis_client.hget(ratelimit.limit_key(REDIS_PREFIX, key_id, "tpm"), "tat") == charged


def test_a_job_the_sweeper_put_back_keeps_its_tokens_for_its_first_worker(client, redis_client):
    """A job requeued from a worker whose lease ran out may still be written by that worker, which
    then reconciles its tokens; a cancel in between must not give them back too."""
    key_id, headers = tpm_key(60)
    job_id = uuid.UUID(client.post("/v1/jobs", json=BODY, headers=headers).json()["id"])
    with session_scope() as session:
        (claimed,) = jobs.claim_jobs(session, [job_id], "slow", timedelta(minutes=5))
    with session_scope() as session:
        jobs.end_leases(session, "slow")
    with session_scope() as session:
        requeued, _ = jobs.requeue_orphans(session, 3, ["parked"])
    assert [moved.id for moved in requeued] == [job_id]
    charged = redis_client.hget(ratelimit.limit_key(REDIS_PREFIX, key_id, "tpm"), "tat")
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=headers).status_code == 200
    assert redis_client.hget(ratelimit.limit_key(REDIS_PREFIX, key_id, "tpm"), "tat") == charged
    late = jobs.Outcome(job_id=job_id, attempt=claimed.attempts, succeeded=True, text="x")
    with session_scope() as session:  # the slow worker's batch lands: it reconciles the tokens
        assert jobs.finish_jobs(session, [late]) == [job_id]


@pytest.mark.parametrize(
    "status, attempts, refund",
    [("queued", 0, CHARGED), ("queued", 1, 0), ("running", 1, 0), ("running", 2, 0)],
)
def test_only_a_job_never_claimed_gives_its_tokens_back_on_cancel(status, attempts, refund):
    assert jobs.tokens_to_refund(status, attempts, CHARGED) == refund
