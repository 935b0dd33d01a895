"""Request bodies and the job resource, as in the public API contract."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, StringConstraints

from llmq.generation import NO_NUL, GenerationParams
from llmq.jobs import NewJob
from llmq.resources import job_resource

__all__ = ["BulkCreate", "JobCreate", "Message", "job_resource"]

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


class JobCreate(GenerationParams):
    """Submit body. The generation parameters (and their defaults) come from
    `llmq.generation.GenerationParams`; parameter names follow OpenAI's."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=False)

    model: str = Field(min_length=1, max_length=200)
    prompt: Annotated[str, StringConstraints(min_length=1, pattern=NO_NUL)] | None = None
    messages: list[Message] | None = Field(None, min_length=1, max_length=1000)
    priority: int = Field(0, ge=0, le=9, description="0 (normal) to 9 (most urgent)")
    webhook_url: HttpUrl | None = None
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=16)
    expires_in_s: int | None = Field(
        None, ge=1, description="Expire the job if no worker has taken it within N seconds"
    )
    user: Annotated[str, StringConstraints(max_length=256, pattern=NO_NUL)] | None = Field(
        None, description="The end user (OpenAI's `user`); an alias with sticky = user keys on it"
    )
    cache: bool = Field(
        True, description="false: the exact cache neither answers this job nor keeps its answer"
    )

    def params(self, max_tokens: int) -> GenerationParams:
        return GenerationParams.pick(self, max_tokens=max_tokens)

    def to_new_job(self, max_tokens: int | None) -> NewJob:
        return NewJob(
            model=self.model,
            params=self.params(max_tokens),
            prompt=self.prompt,
            messages=[m.model_dump() for m in self.messages] if self.messages else None,
            priority=self.priority,
            metadata=self.metadata,
            webhook_url=str(self.webhook_url) if self.webhook_url else None,
            user=self.user,
        )


class BulkCreate(BaseModel):
    """Many jobs in one request: written in one transaction, or not at all."""

    model_config = ConfigDict(extra="forbid", strict=True)
    jobs: list[JobCreate] = Field(min_length=1, max_length=10_000)
