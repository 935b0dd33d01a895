"""A batch's equal greedy lines run once (`llmq.jobs.dedup`), against a live API process, real
echo workers and the feeder's rounds: each line still gets its output line and its ledger row,
a leader whose end answers nothing hands over to a follower, and neither the sweeper nor a
resume publishes a follower."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import httpx
import redis
import sqlalchemy as sa

from llmq import job_queries
from llmq.db import session_scope
from llmq.ledger import token_cost_usd
from llmq.models import Job, LedgerEntry
from llmq.queues import make_celery
from llmq.settings import get_settings
from scheduler.sweeper import Sweeper
from tests.api.routes import test_batches
from tests.api.routes.test_batches import CHAT, feed, lines, request, sdk, until_status, upload
from tests.conftest import REDIS_URL, make_key

api = test_batches.api  # the same fixture
MODEL = "echo-dedup"  # runs at 1000/2000 per Mtok, cache hits at 100, batch lines at half


def line(custom_id: str, content: str = "one two three", **params) -> dict:
    return request(custom_id, model=MODEL, messages=[{"role": "user", "content": content}],
                   **params)  # fmt: skip


def jobs_of(batch_id: str) -> dict[str, Job]:
    with session_scope() as session:
        rows = session.scalars(sa.select(Job).where(Job.batch_id == batch_id)).all()
        session.expunge_all()
    return {job.custom_id: job for job in rows}


def ledger_of(batch_id: str) -> dict[str, LedgerEntry]:
    with session_scope() as session:
        rows = session.execute(
            sa.select(Job.custom_id, LedgerEntry)
            .join(LedgerEntry, LedgerEntry.job_id == Job.id)
            .where(Job.batch_id == batch_id)
        ).all()
        session.expunge_all()
    return {custom_id: entry for custom_id, entry in rows}


def test_equal_greedy_lines_run_once_and_each_gets_its_line_and_ledger_row(api, start_worker):
    client = sdk(api, make_key("dedup"))
    items = [
        *(line(f"a{i}", temperature=0) for i in range(3)),
        line("b", "four five six", temperature=0),
        *(line(f"s{i}") for i in range(2)),  # sampled: each runs
        *(line(f"d{i}", temperature=1, seed=7) for i in range(2)),  # seeded repeats differ
    ]
    file_id = upload(client, items)
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    created = jobs_of(batch.id)
    leader = created["a0"].id
    assert {c: j.same_as for c, j in created.items() if j.same_as} == {"a1": leader, "a2": leader}
    assert created["a0"].leads and not created["a1"].in_backlog and created["a0"].in_backlog

    start_worker(MODEL)
    done = until_status(client, batch.id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (8, 0)
    ended = jobs_of(batch.id)
    attempts = {c: j.attempts for c, j in ended.items()}
    assert attempts == {"a0": 1, "a1": 0, "a2": 0, "b": 1, "s0": 1, "s1": 1, "d0": 1, "d1": 1}
    assert not any(j.leads for j in ended.values())  # nothing left to resolve

    out = {o["custom_id"]: o for o in lines(client, done.output_file_id)}
    assert sorted(out) == sorted(c for c in created)
    texts = {c: o["response"]["body"]["choices"][0]["message"]["content"] for c, o in out.items()}
    assert texts["a0"] == texts["a1"] == texts["a2"] == "one two"
    assert texts["b"] == "four five"
    assert len({out[c]["id"] for c in out}) == 8  # each line its own request id

    ledger = ledger_of(batch.id)
    assert sorted(ledger) == sorted(created)
    for custom_id in ("a1", "a2"):
        entry = ledger[custom_id]
        assert entry.cached and ended[custom_id].cached
        assert entry.cost_usd == token_cost_usd(
            entry.prompt_tokens, entry.completion_tokens, Decimal(100), Decimal(100), Decimal("0.5")
        )
        assert entry.created_at == ended[custom_id].finished_at
        tokens = (entry.prompt_tokens, entry.completion_tokens)
        assert tokens == (ledger["a0"].prompt_tokens, ledger["a0"].completion_tokens)
    run = ledger["a0"]
    assert not run.cached and run.cost_usd == token_cost_usd(
        run.prompt_tokens, run.completion_tokens, Decimal(1000), Decimal(2000), Decimal("0.5")
    )
    assert done.usage.output_tokens == sum(e.completion_tokens for e in ledger.values())


def test_a_leader_that_fails_hands_over_to_its_first_follower(api, start_worker):
    client = sdk(api, make_key("dedup-fail"))
    file_id = upload(client, [line(f"f{i}", temperature=0) for i in range(3)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    leader = jobs_of(batch.id)["f0"]
    with session_scope() as session:  # as a worker writes a failure
        session.execute(
            sa.update(Job)
            .where(Job.id == leader.id)
            .values(status="failed", finished_at=sa.func.now(), in_backlog=False,
                    error={"code": "engine_error", "message": "boom"})
        )  # fmt: skip
    feed()
    promoted = jobs_of(batch.id)
    assert promoted["f1"].same_as is None and promoted["f1"].leads
    assert promoted["f2"].same_as == promoted["f1"].id and not promoted["f2"].in_backlog

    start_worker(MODEL)
    done = until_status(client, batch.id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (2, 1)
    ended = jobs_of(batch.id)
    assert (ended["f1"].attempts, ended["f2"].attempts) == (1, 0)
    assert ended["f2"].cached and ended["f2"].output_text == ended["f1"].output_text
    assert sorted(ledger_of(batch.id)) == ["f1", "f2"]
    errors = lines(client, done.error_file_id)
    assert [e["custom_id"] for e in errors] == ["f0"]


def test_no_sweep_nor_resume_publishes_a_follower_and_a_cancel_ends_them(api):
    """No worker serves `parked`: every line stays queued."""
    key = make_key("dedup-parked")
    client = sdk(api, key)
    file_id = upload(client, [request(f"p{i}", model="parked", temperature=0) for i in range(3)])
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    headers = {"Authorization": f"Bearer {key}"}
    paused = httpx.post(f"{api.url}/v1/batches/{batch.id}/pause", headers=headers, timeout=10)
    assert paused.status_code == 200, paused.text
    resumed = httpx.post(f"{api.url}/v1/batches/{batch.id}/resume", headers=headers, timeout=10)
    assert resumed.status_code == 200, resumed.text
    created = jobs_of(batch.id)
    assert {c for c, j in created.items() if j.in_backlog} == {"p0"}

    feed()
    eager = get_settings().model_copy(update={"republish_after_s": 0})
    report = Sweeper(eager, redis.Redis.from_url(REDIS_URL), make_celery(eager)).sweep()
    followers = {str(created[c].id) for c in ("p1", "p2")}
    assert not followers & set(report.republished)
    with session_scope() as session:
        stale = job_queries.stale_queued(session, timedelta(0), ["parked"]).get("parked", [])
    assert not followers & {str(i) for i in stale}
    after = jobs_of(batch.id)
    assert {c: j.status for c, j in after.items()} == dict.fromkeys(("p0", "p1", "p2"), "queued")
    assert after["p0"].published_at is not None  # the feeder took the leader
    assert all(after[c].published_at is None and not after[c].in_backlog for c in ("p1", "p2"))

    cancelled = client.batches.cancel(batch.id)
    assert cancelled.status == "cancelled"
    assert sorted(e["custom_id"] for e in lines(client, cancelled.error_file_id)) == [
        "p0", "p1", "p2",
    ]  # fmt: skip
    feed()  # the cancelled leader has no follower left to resolve
    assert not any(j.leads for j in jobs_of(batch.id).values())
