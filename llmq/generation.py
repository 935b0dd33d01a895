"""What a job asks of the model: the one contract between the API and the worker.

The API validates a submit body against these fields (its schema derives from this model), the
job row stores `to_row()`, and the worker reads it back with `from_row()`. Every parameter and
its default is declared here and nowhere else, so both sides always agree on what a job that
leaves a parameter out means. Names follow OpenAI's.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_STOPS = 4
NO_NUL = r"^[^\x00]*$"  # Postgres text cannot hold NUL
StopSequence = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=NO_NUL)]


class GenerationParams(BaseModel):
    """The generation parameters of one job, with the defaults docs/api.md documents."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    max_tokens: int | None = Field(None, ge=1, description="None: the model's default_max_tokens")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[StopSequence] = Field(
        default_factory=list,
        max_length=MAX_STOPS,
        description=f"One string or up to {MAX_STOPS}; the text ends before the first one",
    )
    seed: int | None = Field(None, ge=0, le=2**63 - 1)

    @field_validator("stop", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """A single string is one stop sequence; None is none."""
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_row(self) -> dict[str, Any]:
        """The JSON a job row stores: every parameter, defaults written out."""
        return self.model_dump(mode="json")

    @classmethod
    def from_row(cls, row: dict[str, Any] | None) -> GenerationParams:
        """Read a stored row back; a parameter it lacks takes the default declared here."""
        return cls.model_validate(row or {})

    @classmethod
    def pick(cls, source: BaseModel, **overrides: Any) -> GenerationParams:
        """The parameters of a model that derives from this one (an API body)."""
        values = {name: getattr(source, name) for name in cls.model_fields}
        return cls.model_validate(values | overrides)
