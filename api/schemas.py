"""Request bodies and the job resource, as in the public API contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints, field_validator

from llmq.jobs import NewJob
from llmq.resources import job_resource

__all__ = ["BulkCreate", "JobCreate", "Message", "job_resource"]

NO_NUL = r"^[^\x00]*$"  # Postgres text cannot hold NUL
Text = Annotated[str, StringConstraints(pattern=NO_NUL)]
MetadataValue = (
    Annotated[str, StringConstraints(max_length=512, pattern=NO_NUL)]
    | int
    | (Annotated[float, Field(allow_inf_nan=False)])
    | bool
    | None
)
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NO_NUL)]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: Text


class JobCreate(BaseModel):
    """Submit body. Parameter names follow OpenAI's so clients map one to one."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, max_length=200)
    prompt: Annotated[str, StringConstraints(min_length=1, pattern=NO_NUL)] | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=1000)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    priority: int = Field(0, ge=0, le=9, description="0 (normal) to 9 (most urgent)")
    webhook_url: HttpUrl | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=16)
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
        if any(not s or len(s) > 200 or "\x00" in s for s in stops):
            raise ValueError("each stop sequence must be 1 to 200 characters, without NUL")
        return stops

    def params(self, max_tokens: int) -> dict[str, Any]:
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "stop": self.stop or [],
            "seed": self.seed,
        }

    def to_new_job(self, max_tokens: int) -> NewJob:
        return NewJob(
            model=self.model,
            params=self.params(max_tokens),
            prompt=self.prompt,
            messages=[m.model_dump() for m in self.messages] if self.messages else None,
            priority=self.priority,
            metadata=self.metadata,
            webhook_url=str(self.webhook_url) if self.webhook_url else None,
        )

    def input_chars(self) -> int:
        if self.prompt is not None:
            return len(self.prompt)
        return sum(len(m.content) for m in self.messages or [])


class BulkCreate(BaseModel):
    """Many jobs in one request: written in one transaction, or not at all."""

    model_config = ConfigDict(extra="forbid", strict=True)
    jobs: list[JobCreate] = Field(min_length=1, max_length=10_000)
