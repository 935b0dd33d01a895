"""OpenAI's response shapes, rendered from job rows alone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from llmq.errors import JobFailed, JobStopped
from llmq.models import Job
from llmq.openai_responses import (
    chunk,
    chunk_head,
    completion,
    error_body,
    unsuccessful,
    usage_chunk,
    wait_limit_reached,
)

CREATED = datetime(2026, 12, 1, tzinfo=UTC)


def job(text: str = "hi there", status: str = "succeeded", **fields) -> Job:
    values = {"id": uuid.uuid4(), "model": "m", "status": status, "created_at": CREATED,
              "output_text": text, "finish_reason": "stop", "prompt_tokens": 5,
              "completion_tokens": 2} | fields  # fmt: skip
    return Job(**values)


def test_a_chat_completion_has_one_choice_per_job_in_order():
    first, second = job("a"), job("b", finish_reason="length")
    body = completion("chat", [first, second])
    assert body["id"] == f"chatcmpl-{first.id}" and body["object"] == "chat.completion"
    assert body["created"] == int(CREATED.timestamp()) and body["model"] == "m"
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "a", "refusal": None},
         "logprobs": None, "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "b", "refusal": None},
         "logprobs": None, "finish_reason": "length"},
    ]  # fmt: skip
    assert body["usage"] == {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14}


def test_a_text_completion():
    only = job("x y")
    body = completion("text", [only])
    assert body["id"] == f"cmpl-{only.id}" and body["object"] == "text_completion"
    assert body["choices"] == [
        {"text": "x y", "index": 0, "logprobs": None, "finish_reason": "stop"}
    ]


def test_stream_chunks():
    first = job()
    head = chunk_head("chat", first, include_usage=True)
    assert head["object"] == "chat.completion.chunk" and head["usage"] is None
    role = chunk("chat", head, 1, first=True)["choices"][0]
    assert role == {"index": 1, "delta": {"role": "assistant", "content": ""},
                    "logprobs": None, "finish_reason": None}  # fmt: skip
    assert chunk("chat", head, 0, "tok")["choices"][0]["delta"] == {"content": "tok"}
    end = chunk("chat", head, 0, finish_reason="stop")["choices"][0]
    assert end["delta"] == {} and end["finish_reason"] == "stop"
    last = usage_chunk(head, [first])
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 7
    text_head = chunk_head("text", first, include_usage=False)
    assert "usage" not in text_head and text_head["object"] == "text_completion"
    assert chunk("text", text_head, 0, "t")["choices"][0]["text"] == "t"


def test_jobs_without_a_result_become_errors_that_name_them():
    ok = job()
    failed = job(None, "failed", error={"code": "context_length_exceeded", "message": "long"})
    assert unsuccessful([ok]) is None
    error = unsuccessful([ok, failed])
    assert isinstance(error, JobFailed) and error.code == "context_length_exceeded"
    assert str(failed.id) in str(error) and error.job_ids == [str(ok.id), str(failed.id)]
    stopped = unsuccessful([job(None, "cancelled")])
    assert isinstance(stopped, JobStopped) and stopped.code == "job_cancelled"
    late = wait_limit_reached(["j1"], 2.5)
    assert "j1" in str(late) and "2.5 s" in str(late) and late.code == "wait_limit_exceeded"


def test_the_error_envelope():
    assert error_body("m", "t", "p", "c") == {
        "error": {"message": "m", "type": "t", "param": "p", "code": "c"}
    }
