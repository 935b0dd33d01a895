"""What a new job must satisfy before admission, as far as the catalog and settings can tell.

Pure: shared by every way a job is asked for (`POST /v1/jobs`, the OpenAI-shaped routes), so
each refuses the same jobs. A request may name a field its own way (OpenAI's
`max_completion_tokens`), so the error names the field the client wrote.
"""

from __future__ import annotations

from llmq import routing
from llmq.catalog import Catalog
from llmq.errors import InvalidField, UnknownModel
from llmq.jobs import NewJob


def input_field(new: NewJob) -> str:
    return "prompt" if new.prompt is not None else "messages"


def input_chars(new: NewJob) -> int:
    if new.prompt is not None:
        return len(new.prompt)
    return sum(len(str(m.get("content", ""))) for m in new.messages or [])


def input_text(new: NewJob) -> str:
    if new.prompt is not None:
        return new.prompt
    return "\n".join(str(m.get("content", "")) for m in new.messages or [])


def input_bytes(new: NewJob) -> int:
    if new.prompt is not None:
        return len(new.prompt.encode())
    return sum(len(str(m.get("content", "")).encode()) for m in new.messages or [])


def check_model(model: str, catalog: Catalog) -> None:
    """A model or an alias the catalog knows."""
    if not catalog.knows(model):
        raise UnknownModel("model", f"unknown model {model!r}; see GET /v1/models")


def resolve_alias(new: NewJob, catalog: Catalog, key_id: str) -> NewJob:
    """A job that names an alias gets the model the alias picks for it (`llmq.routing`),
    and keeps the alias and the variant; a job that names a model is left as it is."""
    alias = catalog.aliases.get(new.model)
    if alias is None:
        return new
    facts = routing.Facts(
        key_id=key_id,
        user=new.user,
        text=input_text(new),
        text_bytes=input_bytes(new),
        max_tokens=new.params.max_tokens,
        metadata=new.metadata,
    )
    choice = routing.route(alias, facts)
    new.model, new.alias, new.variant = choice.model, alias.name, choice.variant
    return new


def check_job(
    new: NewJob,
    catalog: Catalog,
    max_prompt_chars: int,
    max_tokens_field: str = "max_tokens",
    key_id: str = "",
) -> NewJob:
    """Refuse what no worker could run as asked; return the job with an alias resolved to
    its model (sticky per `key_id` or the job's `user`) and its `max_tokens` resolved to
    the model's default when the request left it out."""
    check_model(new.model, catalog)
    new = resolve_alias(new, catalog, key_id)
    if input_chars(new) > max_prompt_chars:
        raise InvalidField(input_field(new), f"input exceeds {max_prompt_chars} characters")
    spec = catalog.get(new.model)
    max_tokens = new.params.max_tokens or spec.default_max_tokens
    if max_tokens > spec.max_new_tokens:
        raise InvalidField(max_tokens_field, f"{new.model} allows at most {spec.max_new_tokens}")
    caps = spec.capabilities
    if new.params.seed is not None and not new.params.greedy and not caps.per_job_seed:
        raise InvalidField(
            "seed",
            f"{new.model} cannot honour a seed: {caps.no_seed_reason}; "
            "leave out `seed` or use temperature 0",
        )
    new.params = new.params.model_copy(update={"max_tokens": max_tokens})
    return new
