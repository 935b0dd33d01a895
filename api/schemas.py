"""Request bodies and the job resource, as in the public API contract."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, field_validator

from llmq.models import Job

MetadataValue = str | int | float | bool | None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class JobCreate(BaseModel):
    """Submit body. Parameter names follow OpenAI's so clients map one to one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=200)
    prompt: str | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=1000)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    priority: int = Field(0, ge=0, le=9, description="0 (normal) to 9 (most urgent)")
    webhook_url: HttpUrl | None = None
    metadata: dict[str, MetadataValue] = Field(default_factory=dict, max_length=16)
    expires_in_s: int | None = Field(
        None, ge=1, description="Expire the job if no worker has taken it within N seconds"
    )

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s or len(s) > 200 for s in stops):
            raise ValueError("each stop sequence must be 1 to 200 characters")
        return stops

    def params(self, max_tokens: int) -> dict[str, Any]:
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop or [],
            "seed": self.seed,
        }

    def input_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])


def job_resource(job: Job, cost: tuple[Decimal, Decimal] | None, flower_url: str | None) -> dict:
    """The public shape of a job (see docs/api.md)."""
    usage = None
    if job.prompt_tokens is not None:
        usage = {
            "prompt_tokens": job.prompt_tokens,
            "completion_tokens": job.completion_tokens,
            "total_tokens": job.prompt_tokens + (job.completion_tokens or 0),
            "cost_usd": str(cost[0].normalize()) if cost else None,
            "gpu_cost_usd": str(cost[1].normalize()) if cost else None,
        }
    output = None
    if job.output_text is not None:
        output = {"text": job.output_text, "finish_reason": job.finish_reason}
    resource = {
        "id": str(job.id),
        "object": "job",
        "model": job.model,
        "status": job.status,
        "priority": job.priority,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "output": output,
        "usage": usage,
        "error": job.error,
        "attempts": job.attempts,
        "expires_at": _iso(job.expires_at),
        "metadata": job.meta or {},
        "timings": {
            "queue_ms": job.queue_ms,
            "inference_ms": job.inference_ms,
            "batch_size": job.batch_size,
        },
    }
    if flower_url:
        resource["links"] = {"flower": f"{flower_url.rstrip('/')}/task/{job.id}"}
    return resource


def _iso(value) -> str | None:
    return value.isoformat() if value else None
