"""OpenAI's request bodies (`/v1/chat/completions`, `/v1/completions`) and how one becomes
llmq jobs.

Pure, with no HTTP: the routes and a batch's input lines turn the same body into the same
jobs. Each choice is one job (`n` of them per prompt), so the batching worker batches them
and the ledger charges each. A parameter llmq cannot honour is refused naming it, unless it
carries the value that asks for nothing (`logprobs: false`, `presence_penalty: 0`); a key
nobody knows is refused too. Nothing is silently ignored.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from llmq import job_checks
from llmq.catalog import Catalog
from llmq.errors import InvalidField, UnsupportedParameter
from llmq.generation import NO_NUL, GenerationParams
from llmq.jobs import NewJob

MAX_CHOICES = 128  # jobs one request may make: prompts times n
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
NonEmpty = Annotated[str, StringConstraints(min_length=1, pattern=NO_NUL)]
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]
MetadataValue = Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)]
STRICT = ConfigDict(extra="forbid", strict=True)

# Parameters llmq cannot honour, with the values that ask for nothing and so are accepted.
UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "parallel_tool_calls": (None,),
    "functions": (None, []),
    "function_call": (None, "none"),
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "reasoning_effort": (None,),
    "service_tier": (None, "auto", "default"),
    "store": (None, False),
    "web_search_options": (None,),
    "echo": (None, False),
    "best_of": (None, 1),
    "suffix": (None, ""),
}


def unsupported(name: str) -> Any:
    """A declared parameter (so the spec lists it) that `check_supported` refuses."""
    return Field(None, description=f"Not supported; accepted only as one of {UNSUPPORTED[name]}")


class TextPart(BaseModel):
    model_config = STRICT
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    """A message llmq can render with a chat template: text only, no tool calls."""

    model_config = STRICT
    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]

    def as_job_message(self) -> dict[str, str]:
        """`developer` is the newer name of `system`; text parts are joined."""
        content = (
            self.content
            if isinstance(self.content, str)
            else "\n".join(p.text for p in self.content)
        )
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class StreamOptions(BaseModel):
    model_config = STRICT
    include_usage: bool = False


class OpenAIRequest(GenerationParams):
    """What both routes share. Generation parameters and their defaults come from
    `GenerationParams` (a left-out `max_tokens` is the model's `default_max_tokens`)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)

    model: str = Field(min_length=1, max_length=200)
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="Choices per prompt; each is a job")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: Annotated[str, StringConstraints(max_length=256, pattern=NO_NUL)] | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(None, max_length=16)
    logprobs: Any = unsupported("logprobs")
    logit_bias: Any = unsupported("logit_bias")
    presence_penalty: Any = unsupported("presence_penalty")
    frequency_penalty: Any = unsupported("frequency_penalty")


class ChatCompletionRequest(OpenAIRequest):
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    max_completion_tokens: int | None = Field(None, ge=1, description="Same as max_tokens")
    tools: Any = unsupported("tools")
    tool_choice: Any = unsupported("tool_choice")
    parallel_tool_calls: Any = unsupported("parallel_tool_calls")
    functions: Any = unsupported("functions")
    function_call: Any = unsupported("function_call")
    top_logprobs: Any = unsupported("top_logprobs")
    response_format: Any = unsupported("response_format")
    audio: Any = unsupported("audio")
    modalities: Any = unsupported("modalities")
    prediction: Any = unsupported("prediction")
    reasoning_effort: Any = unsupported("reasoning_effort")
    service_tier: Any = unsupported("service_tier")
    store: Any = unsupported("store")
    web_search_options: Any = unsupported("web_search_options")


class CompletionRequest(OpenAIRequest):
    prompt: NonEmpty | list[NonEmpty] = Field(
        description="A string, or a list of strings: n choices per prompt"
    )
    echo: Any = unsupported("echo")
    best_of: Any = unsupported("best_of")
    suffix: Any = unsupported("suffix")


def _same(value: Any, harmless: Any) -> bool:
    return value == harmless and isinstance(value, bool) == isinstance(harmless, bool)


def check_supported(body: BaseModel) -> None:
    """Refuse a parameter llmq cannot honour, naming it. Only the parameters the client
    gave are read: a left-out one is None, which every entry accepts."""
    given = body.model_fields_set
    for name, harmless in UNSUPPORTED.items():
        if name in given and not any(_same(getattr(body, name), ok) for ok in harmless):
            raise UnsupportedParameter(
                name,
                f"llmq does not support `{name}` (other than {', '.join(map(repr, harmless))})",
            )
    if body.stream_options is not None and not body.stream:
        raise InvalidField("stream_options", "`stream_options` needs `stream: true`")


def _base_job(body: OpenAIRequest, max_tokens: int | None) -> NewJob:
    return NewJob(
        model=body.model,
        params=GenerationParams.pick(body, max_tokens=max_tokens),
        metadata=dict(body.metadata or {}),
        user=body.user,
    )


def _choices(jobs: list[NewJob], n: int) -> list[NewJob]:
    if len(jobs) * n > MAX_CHOICES:
        raise InvalidField("n", f"prompts times n may make at most {MAX_CHOICES} choices")
    return [job if i == 0 else copy.deepcopy(job) for job in jobs for i in range(n)]


def chat_request_to_jobs(
    body: ChatCompletionRequest, catalog: Catalog, max_prompt_chars: int, key_id: str = ""
) -> list[NewJob]:
    """The `n` jobs of a chat completion request, in choice order, each checked as a submit
    is (`job_checks.check_job`, an alias routed for `key_id`); raises domain errors naming
    the param at fault."""
    check_supported(body)
    job_checks.check_model(body.model, catalog)
    field = max_tokens_field(body)
    if (
        None not in (body.max_tokens, body.max_completion_tokens)
        and body.max_tokens != body.max_completion_tokens
    ):
        raise InvalidField(
            "max_tokens", "give `max_tokens` or `max_completion_tokens`, not two values"
        )
    new = _base_job(body, body.max_completion_tokens or body.max_tokens)
    new.messages = [m.as_job_message() for m in body.messages]
    return _choices([job_checks.check_job(new, catalog, max_prompt_chars, field, key_id)], body.n)


def completion_request_to_jobs(
    body: CompletionRequest, catalog: Catalog, max_prompt_chars: int, key_id: str = ""
) -> list[NewJob]:
    """The jobs of a completion request: for each prompt, `n` jobs; choice `i * n + j` is
    prompt `i`'s `j`-th, as OpenAI orders them."""
    check_supported(body)
    job_checks.check_model(body.model, catalog)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise InvalidField("prompt", "give at least one prompt")
    jobs = []
    for prompt in prompts:
        new = _base_job(body, body.max_tokens)
        new.prompt = prompt
        jobs.append(job_checks.check_job(new, catalog, max_prompt_chars, key_id=key_id))
    return _choices(jobs, body.n)


def max_tokens_field(body: OpenAIRequest) -> str:
    """The name the client gave the token limit, for errors about it."""
    return (
        "max_completion_tokens"
        if getattr(body, "max_completion_tokens", None) is not None
        else "max_tokens"
    )
