"""An OpenAI request body becomes llmq jobs, or a domain error that names the param."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmq.catalog import Catalog, ModelSpec
from llmq.errors import InvalidField, UnknownModel, UnsupportedParameter
from llmq.openai_requests import (
    MAX_CHOICES,
    UNSUPPORTED,
    ChatCompletionRequest,
    CompletionRequest,
    chat_request_to_jobs,
    completion_request_to_jobs,
)

CATALOG = Catalog(
    {"m": ModelSpec(name="m", engine="echo", max_new_tokens=100, default_max_tokens=7)}
)
HI = [{"role": "user", "content": "hi"}]


def chat(**body) -> list:
    request = ChatCompletionRequest.model_validate({"model": "m", "messages": HI} | body)
    return chat_request_to_jobs(request, CATALOG, 1000)


def text(**body) -> list:
    request = CompletionRequest.model_validate({"model": "m", "prompt": "hi"} | body)
    return completion_request_to_jobs(request, CATALOG, 1000)


def test_a_chat_request_is_n_jobs_with_its_parameters_user_and_metadata():
    jobs = chat(
        n=3, temperature=0, top_p=0.5, stop="\n", seed=4, max_completion_tokens=9,
        user="u", metadata={"k": "v"},
    )  # fmt: skip
    assert len(jobs) == 3 and len({id(j) for j in jobs}) == 3
    for job in jobs:
        assert job.model == "m" and job.messages == HI and job.prompt is None
        assert (job.params.max_tokens, job.params.temperature, job.params.top_p) == (9, 0, 0.5)
        assert (job.params.stop, job.params.seed) == (["\n"], 4)
        assert (job.user, job.metadata) == ("u", {"k": "v"})


def test_messages_become_what_a_chat_template_renders():
    jobs = chat(
        messages=[
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    )  # fmt: skip
    assert jobs[0].messages == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "a\nb"},
    ]


def test_a_left_out_max_tokens_is_the_models_default():
    assert chat()[0].params.max_tokens == 7
    assert text(max_tokens=3)[0].params.max_tokens == 3


def test_prompts_give_n_choices_each_in_openais_order():
    jobs = text(prompt=["a", "b"], n=2)
    assert [j.prompt for j in jobs] == ["a", "a", "b", "b"]


@pytest.mark.parametrize(
    ("body", "param", "error"),
    [
        ({"model": "nope"}, "model", UnknownModel),
        ({"max_tokens": 101}, "max_tokens", InvalidField),
        ({"max_completion_tokens": 101}, "max_completion_tokens", InvalidField),
        ({"max_tokens": 5, "max_completion_tokens": 6}, "max_tokens", InvalidField),
        ({"stream_options": {"include_usage": True}}, "stream_options", InvalidField),
        ({"n": MAX_CHOICES}, None, None),
        ({"messages": [{"role": "user", "content": "x" * 1001}]}, "messages", InvalidField),
    ],
)
def test_refusals_name_the_param(body, param, error):
    if error is None:
        assert len(chat(**body)) == MAX_CHOICES
        return
    with pytest.raises(error) as refused:
        chat(**body)
    assert refused.value.field == param


def test_too_many_choices_in_all_is_refused_on_n():
    with pytest.raises(InvalidField) as refused:
        text(prompt=["a", "b"], n=MAX_CHOICES)
    assert refused.value.field == "n"


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_an_unsupported_parameter_is_refused_unless_it_asks_for_nothing(name):
    make = text if name in CompletionRequest.model_fields else chat
    if name not in (CompletionRequest.model_fields | ChatCompletionRequest.model_fields):
        pytest.fail(f"{name} is not declared on any request")
    for harmless in UNSUPPORTED[name]:
        assert make(**{name: harmless})
    with pytest.raises(UnsupportedParameter) as refused:
        make(**{name: {"something": True}})
    assert refused.value.field == name


def test_false_is_not_zero_and_zero_point_zero_is_zero():
    assert chat(presence_penalty=0.0)
    with pytest.raises(UnsupportedParameter):
        chat(presence_penalty=False)


@pytest.mark.parametrize(
    "body",
    [
        {"frobnicate": 1},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": "x", "name": "bob"}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
        {"n": 0},
    ],
)
def test_bodies_llmq_cannot_run_do_not_parse(body):
    with pytest.raises(ValidationError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": HI} | body)


def test_token_id_prompts_do_not_parse():
    with pytest.raises(ValidationError):
        CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]})
