"""An error answer is one line, whichever shape the route answers in."""

from __future__ import annotations

import httpx

from cli.common import problem


def test_an_openai_envelope_is_one_line_with_its_param():
    body = {"error": {"message": "no such batch", "type": "invalid_request_error",
                      "param": "batch_id", "code": "not_found"}}  # fmt: skip
    assert problem(httpx.Response(404, json=body)) == (
        "404 invalid_request_error: no such batch (param: batch_id)"
    )


def test_a_problem_document_names_its_fields():
    body = {"title": "Invalid request", "detail": "see errors",
            "errors": [{"field": "model", "message": "unknown"}]}  # fmt: skip
    assert problem(httpx.Response(422, json=body)) == "422 Invalid request: model: unknown"
    assert problem(httpx.Response(404, json={"title": "Not found", "detail": "no job"})) == (
        "404 Not found: no job"
    )


def test_a_body_that_is_not_json_is_its_start():
    assert problem(httpx.Response(502, text="bad gateway")) == "502: bad gateway"
