"""The interface every engine implements, and the request/result types they share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llmq.generation import GenerationParams
from llmq.models import Job

_DEFAULT = GenerationParams()


@dataclass
class GenerationRequest:
    """One job as an engine sees it; `for_job` fills it from the job's `GenerationParams`."""

    job_id: str
    prompt: str | None
    messages: list[dict[str, Any]] | None
    max_tokens: int
    temperature: float = _DEFAULT.temperature
    top_p: float = _DEFAULT.top_p
    stop: list[str] = field(default_factory=list)
    seed: int | None = _DEFAULT.seed

    @classmethod
    def for_job(cls, job: Job, default_max_tokens: int) -> GenerationRequest:
        params = job.params
        return cls(
            str(job.id),
            job.prompt,
            job.messages,
            max_tokens=params.max_tokens or default_max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop),
            seed=params.seed,
        )


@dataclass
class GenerationResult:
    text: str | None
    finish_reason: str | None  # stop | length | cancelled; None when the job failed
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: dict[str, str] | None = None
    batch_size: int = 1  # rows in the generate call that produced this result
    first_token_s: float | None = None  # from the engine's generate() call to the first token

    @property
    def succeeded(self) -> bool:
        return self.error is None


def failure(code: str, message: str, prompt_tokens: int = 0) -> GenerationResult:
    return GenerationResult(None, None, prompt_tokens, 0, {"code": code, "message": message})


TextSink = Callable[[dict[str, str]], None]  # {job id: text generated since the last call}


@dataclass(frozen=True)
class BatchControl:
    """What the loop lends one `generate` call: which jobs were cancelled, where text goes as it
    is generated (always a prefix of each job's final text), and when the call must end."""

    is_cancelled: Callable[[str], bool] = lambda _job_id: False
    on_text: TextSink | None = None
    deadline: float | None = None  # time.monotonic() seconds


NO_CONTROL = BatchControl()


class Engine(Protocol):
    name: str
    device: str

    def generate(
        self, requests: list[GenerationRequest], control: BatchControl = NO_CONTROL
    ) -> list[GenerationResult]:
        """Run one batch of jobs whose sampling settings are compatible; one result each."""
        ...


@runtime_checkable
class ContinuousEngine(Protocol):
    """An engine that runs continuous batching: jobs join and leave the running batch one by
    one (driven by `workers/continuous_loop.py`, not by `generate`)."""

    name: str
    device: str
    context_length: int  # prompt + new tokens of one job
    eos_ids: list[int]

    def prepare(self, req: GenerationRequest) -> tuple[list[int], GenerationResult | None]:
        """The prompt's token ids, or the result of a job that fails before it joins."""
        ...

    def add(self, req: GenerationRequest, prompt_ids: list[int], max_new_tokens: int) -> None:
        """Join the running batch."""
        ...

    def poll(self, timeout_s: float) -> list[Any]:
        """Every output ready now (waiting up to `timeout_s` for the first): each has
        `request_id`, `generated_tokens`, `error` and `is_finished()`."""
        ...

    def cancel(self, job_id: str) -> None: ...

    def decode(self, tokens: list[int]) -> str: ...

    def close(self) -> None:
        """Stop the engine's own threads, so the worker process can exit."""
        ...
