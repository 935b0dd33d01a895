"""The generation parameters: one model, one set of defaults, for the API and the worker."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from llmq import jobs
from llmq.db import session_scope
from llmq.generation import GenerationParams
from llmq.keys import create_key
from llmq.models import Job
from workers.batching import sampling_key
from workers.engines.base import GenerationRequest


def test_a_row_without_temperature_runs_at_the_documented_default():
    """docs/api.md documents temperature 1 as the default: the worker must run it so, and
    batch it so (the runner once read a missing temperature as 0, the batcher as 1)."""
    with session_scope() as session:
        key, _ = create_key(session, "generation-defaults")
        job_id = jobs.create_job(
            session, key.id, jobs.NewJob("tiny", {"max_tokens": 4}, prompt="x")
        ).id
    with session_scope() as session:
        job = session.get(Job, job_id)
        request = GenerationRequest.for_job(job, default_max_tokens=8)
        key_kind = sampling_key(job.params)[0]
        session.delete(job)
    assert request.temperature == 1.0 and request.max_tokens == 4
    assert key_kind == "sample"


def test_the_row_holds_every_parameter_and_reads_back_equal():
    params = GenerationParams(max_tokens=9, temperature=0.3, stop="\n\n", seed=7)
    row = params.to_row()
    assert row == {"max_tokens": 9, "temperature": 0.3, "top_p": 1.0, "stop": ["\n\n"], "seed": 7}
    assert GenerationParams.from_row(row) == params
    assert GenerationParams.from_row(None) == GenerationParams()


@pytest.mark.parametrize("stop", [["a", "b", "c", "d", "e"], [""], ["x" * 201], ["a\x00"], 5])
def test_bad_stop_sequences_are_refused(stop):
    with pytest.raises(ValidationError):
        GenerationParams(stop=stop)


def test_the_api_body_takes_its_parameters_from_the_contract():
    from api.schemas import JobCreate

    body = JobCreate(model="m", prompt="p", temperature=0.0, stop="END")
    assert body.params(12) == GenerationParams(max_tokens=12, temperature=0.0, stop=["END"])
    for name, field in GenerationParams.model_fields.items():
        assert JobCreate.model_fields[name].default == field.default
