"""Which engine a worker runs, and what the API may therefore promise: one rule, table-tested."""

from __future__ import annotations

import pytest

from api.schemas import JobCreate
from api.submission import validate_submit
from llmq.catalog import Catalog, ModelSpec, resolve_engine
from llmq.errors import InvalidField
from llmq.settings import get_settings

SOURCE = {"path": "."}
REMOTE = {"base_url": "http://upstream:8000/v1"}


def _spec(engine: str, device: str) -> ModelSpec:
    where = REMOTE if engine == "openai" else {"source": SOURCE}
    return ModelSpec(name="m", engine=engine, device=device, **where)


@pytest.mark.parametrize(
    ("engine", "device", "cuda", "runs"),
    [
        ("hf", "auto", True, "hf"),
        ("hf-continuous", "cpu", False, "hf-continuous"),
        ("echo", "cuda", True, "echo"),
        ("openai", "auto", True, "openai"),
        ("auto", "auto", True, "hf-continuous"),
        ("auto", "auto", False, "hf"),
        ("auto", "cuda:1", True, "hf-continuous"),
        ("auto", "cpu", True, "hf"),  # the model stays on the CPU: no continuous batching
    ],
)
def test_the_engine_a_worker_runs(engine, device, cuda, runs):
    assert resolve_engine(engine, device, cuda) == runs


@pytest.mark.parametrize(
    ("engine", "device", "engines", "per_job_seed"),
    [
        ("hf", "auto", ("hf",), True),
        ("echo", "auto", ("echo",), True),
        ("hf-continuous", "cpu", ("hf-continuous",), False),
        ("auto", "auto", ("hf", "hf-continuous"), False),  # a CUDA worker would drop the seed
        ("auto", "cuda", ("hf", "hf-continuous"), False),
        ("auto", "cpu", ("hf",), True),
        ("openai", "auto", ("openai",), False),  # a remote server may ignore the seed
    ],
)
def test_a_model_promises_only_what_every_engine_it_may_run_keeps(
    engine, device, engines, per_job_seed
):
    spec = _spec(engine, device)
    assert spec.runnable_engines() == engines
    assert spec.capabilities.per_job_seed is per_job_seed


@pytest.mark.parametrize(
    ("engine", "device", "body", "refused"),
    [
        ("auto", "auto", {"seed": 7, "temperature": 0.8}, True),
        ("hf-continuous", "cpu", {"seed": 7}, True),  # the default temperature samples
        ("auto", "auto", {"seed": 7, "temperature": 0}, False),  # greedy: the seed is moot
        ("auto", "cpu", {"seed": 7, "temperature": 0.8}, False),
        ("hf", "auto", {"seed": 7, "temperature": 0.8}, False),
        ("openai", "auto", {"seed": 7, "temperature": 0.8}, "remote server"),
        ("openai", "auto", {"seed": 7, "temperature": 0}, False),
    ],
)
def test_the_api_refuses_a_seed_the_worker_could_drop(engine, device, body, refused):
    spec = _spec(engine, device)
    submit = JobCreate(model="m", prompt="hi", **body)
    if refused:
        reason = refused if isinstance(refused, str) else "continuous batching"
        with pytest.raises(InvalidField, match=reason):
            validate_submit(submit, Catalog({"m": spec}), get_settings())
    else:
        assert (
            validate_submit(submit, Catalog({"m": spec}), get_settings()).params.max_tokens == 128
        )
