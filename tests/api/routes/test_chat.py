"""The OpenAI routes, driven by the official `openai` client against a real API process and a
real echo worker: answers, streams, errors as the client's exceptions, disconnects, limits."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest

from llmq.db import session_scope
from llmq.keys import Limits, create_key
from tests.conftest import WorkerProcess, make_key, serving, wait_for
from tests.tenancy_helpers import ApiServer

HELLO = [{"role": "user", "content": "the quick brown fox jumps"}]


@pytest.fixture(scope="module")
def api(environment) -> Iterator[ApiServer]:
    server = ApiServer().wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def echo_worker(environment) -> Iterator[WorkerProcess]:
    """Module-scoped: tests that count one echo worker's jobs must not share the queue."""
    yield from serving("echo")


def sdk(api: ApiServer, key: str, **options) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key=key, **{"max_retries": 0, **options})


def limited_key(**limits) -> str:
    with session_scope() as session:
        return create_key(session, f"chat-{uuid.uuid4().hex[:6]}", limits=Limits(**limits))[1]


def jobs_of(api: ApiServer, key: str) -> list[dict]:
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.get(f"{api.url}/v1/jobs", headers=headers, timeout=10).json()["data"]


def test_a_chat_completion_is_n_jobs_answered_in_openai_shape(api, echo_worker):
    key = make_key("chat")
    raw = sdk(api, key).chat.completions.with_raw_response.create(
        model="echo", messages=HELLO, max_tokens=3, n=2, user="u-17", metadata={"ticket": "A-1"}
    )
    answer = raw.parse()
    ids = raw.headers["x-llmq-job-id"].split(",")
    assert answer.object == "chat.completion" and answer.id == f"chatcmpl-{ids[0]}"
    assert [c.index for c in answer.choices] == [0, 1]
    assert {c.message.content for c in answer.choices} == {"the quick brown"}
    assert {c.finish_reason for c in answer.choices} == {"length"}
    # Each choice is a job that read the prompt (echo counts words): 5 prompt, 3 completion.
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (10, 6)
    assert answer.usage.total_tokens == 16
    jobs = {job["id"]: job for job in jobs_of(api, key)}
    assert set(jobs) == set(ids)
    for job_id in ids:
        assert jobs[job_id]["status"] == "succeeded"
        assert jobs[job_id]["metadata"] == {"ticket": "A-1"} and jobs[job_id]["user"] == "u-17"


def test_a_stream_ends_with_usage_and_done(api, echo_worker):
    stream = sdk(api, make_key("stream")).chat.completions.create(
        model="echo", messages=HELLO, max_tokens=4, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)  # the client stops at `data: [DONE]`
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the quick brown fox"
    finished = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finished[-1] == "length" and set(finished[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    assert all(c.usage is None for c in chunks[:-1])


def test_a_text_completion_answers_each_prompt_in_order(api, echo_worker):
    client = sdk(api, make_key("text"))
    answer = client.completions.create(model="echo", prompt=["one two three", "four five"], n=2)
    assert answer.object == "text_completion" and answer.id.startswith("cmpl-")
    assert [(c.index, c.text) for c in answer.choices] == [
        (0, "one two three"), (1, "one two three"), (2, "four five"), (3, "four five")
    ]  # fmt: skip
    assert answer.usage.completion_tokens == 10
    streamed = client.completions.create(model="echo", prompt="six seven", stream=True)
    assert "".join(c.choices[0].text for c in streamed) == "six seven"


def test_an_idempotency_key_answers_a_retry_with_the_same_job(api, echo_worker):
    key = make_key("idem")
    client = sdk(api, key)
    first, again = (
        client.chat.completions.create(
            model="echo", messages=HELLO, extra_headers={"Idempotency-Key": "chat-1"}
        )
        for _ in range(2)
    )
    assert first.id == again.id and len(jobs_of(api, key)) == 1


def test_errors_raise_the_clients_exceptions(api, echo_worker):
    client = sdk(api, make_key("errors"))
    with pytest.raises(openai.AuthenticationError):
        sdk(api, "llmq_wrong").chat.completions.create(model="echo", messages=HELLO)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="nope", messages=HELLO)
    assert unknown.value.body["param"] == "model" and unknown.value.code == "model_not_found"
    for params, param in (
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"extra_body": {"frobnicate": 1}}, "frobnicate"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}, "messages[0]"),
        ({"max_tokens": 0}, "max_tokens"),
    ):
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(**({"model": "echo", "messages": HELLO} | params))
        assert refused.value.body["param"].startswith(param), refused.value.body
    # The value that asks for nothing is accepted.
    assert (
        client.chat.completions.create(
            model="echo", messages=HELLO, logprobs=False, presence_penalty=0, max_tokens=1
        )
        .choices[0]
        .message.content
        == "the"
    )


def test_over_the_rate_is_a_rate_limit_error_with_retry_after(api, echo_worker):
    client = sdk(api, limited_key(rpm=1))
    client.chat.completions.create(model="echo", messages=HELLO, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="echo", messages=HELLO, max_tokens=1)
    assert int(limited.value.response.headers["retry-after"]) >= 1


def test_over_the_budget_is_a_402(api):
    client = sdk(api, limited_key(budget_usd=Decimal("0.0001"), budget_period="day"))
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model="echo-priced", messages=HELLO, max_tokens=64)
    assert refused.value.status_code == 402 and refused.value.code == "budget_exceeded"


def test_a_client_that_leaves_cancels_its_job(api):
    key = make_key("leaver")
    with pytest.raises(openai.APITimeoutError):
        sdk(api, key, timeout=1.5).chat.completions.create(model="parked", messages=HELLO)
    wait_for(lambda: [j["status"] for j in jobs_of(api, key)] == ["cancelled"], 30, "cancelled")

    streamer = make_key("stream-leaver")
    with sdk(api, streamer).chat.completions.create(
        model="parked", messages=HELLO, stream=True
    ) as stream:
        assert next(iter(stream)).choices[0].delta.role == "assistant"
    wait_for(
        lambda: [j["status"] for j in jobs_of(api, streamer)] == ["cancelled"], 30, "cancelled"
    )


@pytest.fixture(scope="module")
def cb_worker(environment) -> Iterator[WorkerProcess]:
    """`tiny-cb` makes its tokens one by one: a job is seen running long before it ends."""
    yield from serving("tiny-cb")


LONG = {"model": "tiny-cb", "messages": HELLO, "max_tokens": 230, "temperature": 0}


def cancelled_with_usage(api: ApiServer, key: str) -> dict:
    """The key's one job once it ended cancelled and its usage is in the ledger."""

    def accounted() -> dict | None:
        (job,) = jobs_of(api, key)
        return job if job["usage"] is not None else None

    job = wait_for(accounted, 60, "the job's usage")
    assert job["status"] == "cancelled" and job["output"]["finish_reason"] == "cancelled"
    assert job["usage"]["completion_tokens"] < LONG["max_tokens"]  # it paid for what ran
    return job


def test_a_client_that_leaves_while_its_job_runs_stops_it_at_its_next_token(api, cb_worker):
    """The request is written on a bare socket, which is closed once the job runs."""
    key = make_key("running-leaver")
    body = json.dumps(LONG).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", api.port), timeout=30) as conn:
        conn.sendall(head.encode() + body)
        wait_for(
            lambda: [j["status"] for j in jobs_of(api, key)] == ["running"],
            60, "the job to run", interval_s=0.01,
        )  # fmt: skip
    cancelled_with_usage(api, key)

    streamer = make_key("running-stream-leaver")
    with sdk(api, streamer).chat.completions.create(**LONG, stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break  # a token came: the job is running
    job = cancelled_with_usage(api, streamer)
    assert job["usage"]["completion_tokens"] >= 1


def test_the_wait_limit_names_the_job_which_keeps_its_place(environment):
    server = ApiServer({"LLMQ_OPENAI_WAIT_LIMIT_S": "1"}).wait_ready()
    try:
        key = make_key("patient")
        with pytest.raises(openai.APIStatusError) as late:  # the client's default retries
            openai.OpenAI(base_url=f"{server.url}/v1", api_key=key).chat.completions.create(
                model="parked", messages=HELLO
            )
        assert late.value.status_code == 408 and late.value.code == "wait_limit_exceeded"
        jobs = jobs_of(server, key)
        assert [j["status"] for j in jobs] == ["queued"]  # one job: the client did not retry
        assert late.value.body["job_ids"] == [jobs[0]["id"]] and jobs[0]["id"] in str(late.value)
        stream = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key).completions.create(
            model="parked", prompt="later", stream=True
        )
        with pytest.raises(openai.APIError, match="did not finish within 1 s"):
            list(stream)
        assert [j["status"] for j in jobs_of(server, key)] == ["queued", "queued"]
    finally:
        server.stop()


def test_past_the_open_wait_cap_a_request_makes_no_job(environment):
    """The cap is checked before admission: the client retries a 429, and must not find
    that its refused request left a job behind."""
    server = ApiServer({"LLMQ_MAX_OPEN_WAITS_PER_KEY": "1"}).wait_ready()
    try:
        key = make_key("capped")
        client = sdk(server, key)
        with client.chat.completions.create(model="parked", messages=HELLO, stream=True) as held:
            next(iter(held))  # the key's one open wait
            with pytest.raises(openai.RateLimitError):
                client.chat.completions.create(model="parked", messages=HELLO)
            assert len(jobs_of(server, key)) == 1
        wait_for(lambda: [j["status"] for j in jobs_of(server, key)] == ["cancelled"], 30, "gone")
    finally:
        server.stop()
