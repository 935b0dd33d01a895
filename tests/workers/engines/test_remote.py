"""The `openai` engine against real upstreams: llmq's own API (an echo worker behind it) and a
small scripted HTTP server that fails the ways real servers do (429, 5xx, a dropped
connection, silence, a stream that breaks after its first words).

Every job is charged once, for the try that answered, at the remote model's own prices.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
import sqlalchemy as sa

from cli.devstack import free_port
from llmq.catalog import ModelSpec
from llmq.db import session_scope
from llmq.errors import CatalogError
from llmq.models import LedgerEntry
from tests.conftest import CATALOG, ROOT, WorkerProcess, make_key, wait_final, wait_for
from tests.tenancy_helpers import Process
from workers.engines.remote import RemoteEngine

UPSTREAM_KEY_ENV = "LLMQ_TEST_UPSTREAM_KEY"
FLAKY_USAGE = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}

REMOTE_MODELS = """
[models.remote-echo]  # llmq's own API as the upstream, its `echo` model behind it
engine = "openai"
base_url = "{api}/v1"
api_key_env = "{key_env}"
upstream_model = "echo"
max_concurrency = 4
max_batch_size = 8
max_batch_wait_ms = 20
request_timeout_s = 30
price_input_per_mtok_usd = "100"
price_output_per_mtok_usd = "300"

[models.remote-flaky]  # the scripted server below
engine = "openai"
base_url = "{flaky}/v1"
max_batch_size = 8
max_batch_wait_ms = 20
request_timeout_s = 3
max_attempts = 3
price_input_per_mtok_usd = "1000"
price_output_per_mtok_usd = "2000"
"""


class Script(BaseHTTPRequestHandler):
    """Answers each try of a job by the job's prompt: `run=<id> plan=429,500,ok` fails the
    first try with 429, the second with 500 and answers the third."""

    tries: Counter[str] = Counter()
    hung_up: set[str] = set()  # runs whose worker closed a `hang` try
    lock = threading.Lock()
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body.get("prompt") or body["messages"][-1]["content"]
        words = dict(w.split("=", 1) for w in prompt.split() if "=" in w)
        with self.lock:
            self.tries[words["run"]] += 1
            n = self.tries[words["run"]]
        plan = words["plan"].split(",")
        step = plan[min(n, len(plan)) - 1]
        try:
            getattr(self, f"_{step}")(body)
        except (BrokenPipeError, ConnectionResetError):
            if step == "hang":
                self.hung_up.add(words["run"])

    def _status(self, code: int, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps({"error": {"message": f"scripted {code}", "type": "x"}}).encode()
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _429(self, body) -> None:
        self._status(429, {"Retry-After": "1"})

    def _500(self, body) -> None:
        self._status(500)

    def _400(self, body) -> None:
        self._status(400)

    def _drop(self, body) -> None:
        self.connection.close()  # no answer at all: a reset connection

    def _slow(self, body) -> None:
        time.sleep(6)  # longer than request_timeout_s: the worker times this try out
        self._ok(body)

    def _start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

    def _event(self, body, text: str | None, reason=None, usage=None) -> None:
        chat = "messages" in body
        choice = {"index": 0, "finish_reason": reason}
        if chat:
            choice["delta"] = {"content": text} if text is not None else {"role": "assistant"}
        else:
            choice["text"] = text or ""
        event = {
            "id": "cmpl-1",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": 0,
            "model": body["model"],
            "choices": [] if usage else [choice],
        }
        if usage:
            event["usage"] = usage
        self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.flush()

    def _stall(self, body) -> None:
        """Starts an answer, counts tokens, then goes silent past the timeout: nothing of it
        may reach the job or its bill."""
        self._start()
        self._event(body, None)
        self._event(body, None, usage={"prompt_tokens": 100, "completion_tokens": 100})
        time.sleep(6)

    def _hang(self, body) -> None:
        """Sends its first words, then keeps the stream open (until the worker closes it)."""
        self._start()
        self._event(body, "partial ")
        for _ in range(600):
            time.sleep(0.05)
            self.wfile.write(b": still here\n\n")
            self.wfile.flush()

    def _break(self, body) -> None:
        """Sends its first words and drops the connection."""
        self._start()
        self._event(body, "partial ")

    def _ok(self, body) -> None:
        self._start()
        self._event(body, "hello ")
        self._event(body, "world", reason="stop")
        self._event(body, None, usage=FLAKY_USAGE)
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def stack(environment) -> Iterator[dict]:
    """A live API, an echo worker behind it, and remote workers for the two upstreams."""
    Script.tries.clear()
    flaky = ThreadingHTTPServer(("127.0.0.1", 0), Script)
    threading.Thread(target=flaky.serve_forever, daemon=True).start()
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    catalog = ROOT / f"models-remote-{uuid.uuid4().hex[:6]}.toml"
    catalog.write_text(
        CATALOG.read_text()
        + REMOTE_MODELS.format(
            api=api, key_env=UPSTREAM_KEY_ENV, flaky=f"http://127.0.0.1:{flaky.server_port}"
        )
    )
    env = {"LLMQ_CATALOG_PATH": str(catalog), UPSTREAM_KEY_ENV: make_key("upstream")}
    api_proc = Process(
        "api-remote", [sys.executable, "-m", "cli", "api", "--port", str(api_port)], env
    )
    workers: list[WorkerProcess] = []
    try:
        wait_for(
            lambda: httpx.get(f"{api}/readyz").status_code == 200,
            60,
            "api",
            process=api_proc,
            ignore=(httpx.HTTPError,),
        )
        workers = [WorkerProcess(m, env) for m in ("echo", "remote-echo", "remote-flaky")]
        for worker in workers:
            worker.wait_ready()
        key = make_key("remote-client")
        with httpx.Client(base_url=api, timeout=30) as http:
            yield {"api": api, "http": http, "key": key, "workers": workers}
    finally:
        for worker in workers:
            worker.stop()
        api_proc.stop()
        flaky.shutdown()


def _auth(stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack['key']}"}


def _submit(stack, model: str, **body) -> str:
    reply = stack["http"].post("/v1/jobs", json={"model": model, **body}, headers=_auth(stack))
    assert reply.status_code == 202, reply.text
    return reply.json()["id"]


def _ledger(job_id: str) -> list[LedgerEntry]:
    with session_scope() as session:
        rows = session.scalars(sa.select(LedgerEntry).where(LedgerEntry.job_id == job_id)).all()
        session.expunge_all()
        return list(rows)


def _price(prompt: int, completion: int, per_in: str, per_out: str) -> Decimal:
    return (prompt * Decimal(per_in) + completion * Decimal(per_out)) / Decimal(1_000_000)


def _flaky(stack, plan: str, **body) -> tuple[dict, str]:
    run = uuid.uuid4().hex[:8]
    job_id = _submit(stack, "remote-flaky", prompt=f"run={run} plan={plan}", **body)
    return wait_final(stack["http"], _auth(stack), job_id), run


def test_a_job_on_the_remote_model_is_answered_upstream_and_priced_here(stack):
    messages = [{"role": "user", "content": "one two three four five six"}]
    job_id = _submit(stack, "remote-echo", messages=messages, max_tokens=4)
    job = wait_final(stack["http"], _auth(stack), job_id)

    assert job["status"] == "succeeded", job
    assert job["output"] == {"text": "one two three four", "finish_reason": "length"}
    # The echo model behind the API counts words: its usage is the job's usage.
    assert (job["usage"]["prompt_tokens"], job["usage"]["completion_tokens"]) == (6, 4)
    (row,) = _ledger(job_id)
    assert (row.model, row.prompt_tokens, row.completion_tokens) == ("remote-echo", 6, 4)
    assert row.cost_usd == _price(6, 4, "100", "300")


def test_a_prompt_job_goes_to_the_completions_endpoint(stack):
    job_id = _submit(stack, "remote-echo", prompt="alpha beta gamma", max_tokens=8)
    job = wait_final(stack["http"], _auth(stack), job_id)
    assert job["status"] == "succeeded", job
    assert job["output"]["text"] == "alpha beta gamma"
    assert (job["usage"]["prompt_tokens"], job["usage"]["completion_tokens"]) == (3, 3)


def test_streaming_passes_through_the_remote_model(stack):
    client = openai.OpenAI(base_url=f"{stack['api']}/v1", api_key=stack["key"], max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="remote-echo",
            messages=[{"role": "user", "content": "stream these five words please"}],
            max_tokens=16,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "stream these five words please"
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 5)


def test_429_and_5xx_are_retried_and_the_answer_charged_once(stack):
    job, run = _flaky(stack, "429,500,ok", max_tokens=8)

    assert job["status"] == "succeeded", job
    assert job["output"] == {"text": "hello world", "finish_reason": "stop"}
    assert Script.tries[run] == 3
    (row,) = _ledger(job["id"])
    assert (row.prompt_tokens, row.completion_tokens) == (7, 5)
    assert row.cost_usd == _price(7, 5, "1000", "2000")


def test_a_timed_out_try_then_an_answer_is_charged_once_for_the_answer(stack):
    """The first try counts 100 + 100 tokens and goes silent; the second answers with 7 + 5.
    The bill is the answer's alone, never the sum."""
    job, run = _flaky(stack, "stall,ok", max_tokens=8)

    assert job["status"] == "succeeded", job
    assert job["output"]["text"] == "hello world"
    assert Script.tries[run] == 2
    assert (job["usage"]["prompt_tokens"], job["usage"]["completion_tokens"]) == (7, 5)
    (row,) = _ledger(job["id"])
    assert (row.prompt_tokens, row.completion_tokens) == (7, 5)
    assert row.cost_usd == _price(7, 5, "1000", "2000")


def test_a_slow_upstream_and_a_dropped_connection_are_retried(stack):
    job, run = _flaky(stack, "slow,drop,ok", max_tokens=8)
    assert job["status"] == "succeeded", job
    assert Script.tries[run] == 3
    assert len(_ledger(job["id"])) == 1


def test_an_upstream_that_keeps_failing_fails_the_job_with_its_code(stack):
    job, run = _flaky(stack, "500", max_tokens=8)

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "upstream_error"
    assert job["error"]["attempts"] == "3" and "500" in job["error"]["message"]
    assert Script.tries[run] == 3
    (row,) = _ledger(job["id"])
    assert row.cost_usd == 0


def test_a_rejected_request_is_not_retried(stack):
    job, run = _flaky(stack, "400", max_tokens=8)
    assert job["status"] == "failed" and job["error"]["code"] == "upstream_rejected", job
    assert job["error"]["attempts"] == "1" and Script.tries[run] == 1


def test_a_stream_that_breaks_after_its_first_words_ends_the_job(stack):
    """Its first words already reached the job's stream: another try could not take them
    back, so the job fails instead of showing text its result does not hold."""
    job, run = _flaky(stack, "break,ok", max_tokens=8)

    assert job["status"] == "failed", job
    assert job["error"]["code"] == "upstream_error" and job["error"]["attempts"] == "1"
    assert job["output"] is None
    assert Script.tries[run] == 1


def test_cancelling_a_job_closes_its_upstream_stream(stack):
    run = uuid.uuid4().hex[:8]
    job_id = _submit(stack, "remote-flaky", prompt=f"run={run} plan=hang", max_tokens=8)
    wait_for(lambda: Script.tries[run] == 1, 30, "the upstream request")
    reply = stack["http"].post(f"/v1/jobs/{job_id}/cancel", headers=_auth(stack))
    assert reply.status_code == 200, reply.text

    wait_for(lambda: run in Script.hung_up, 20, "the worker closing the upstream stream")
    job = wait_final(stack["http"], _auth(stack), job_id)
    assert job["status"] == "cancelled"
    assert Script.tries[run] == 1  # a cancelled job is not tried again


def test_a_worker_without_its_key_refuses_to_start(monkeypatch):
    monkeypatch.delenv("LLMQ_TEST_NO_SUCH_KEY", raising=False)
    spec = ModelSpec(
        name="r",
        engine="openai",
        base_url="http://127.0.0.1:1/v1",
        api_key_env="LLMQ_TEST_NO_SUCH_KEY",
    )
    with pytest.raises(CatalogError, match="LLMQ_TEST_NO_SUCH_KEY"):
        RemoteEngine(spec)
