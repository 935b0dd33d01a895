"""GET /v1/models in OpenAI's list shape, llmq's live fields kept; GET /v1/models/{id}."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.conftest import make_key
from tests.tenancy_helpers import ApiServer


@pytest.fixture(scope="module")
def sdk(environment) -> Iterator[openai.OpenAI]:
    server = ApiServer().wait_ready()
    yield openai.OpenAI(base_url=f"{server.url}/v1", api_key=make_key("models"), max_retries=0)
    server.stop()


def test_models_list_and_retrieve_in_openai_shape(sdk):
    models = {m.id: m for m in sdk.models.list()}
    assert {"echo", "tiny", "parked"} <= set(models)
    echo = models["echo"]
    assert echo.object == "model" and echo.owned_by == "llmq" and echo.created > 0
    # llmq's own fields ride along
    extra = echo.model_extra
    assert extra["engine"] == "echo" and extra["queue"] == "llmq.model.echo"
    assert set(extra["live"]) == {"waiting", "backlog", "in_flight", "workers", "oldest_wait_s"}
    one = sdk.models.retrieve("echo")
    assert (one.id, one.created, one.owned_by) == ("echo", echo.created, "llmq")
    assert one.model_extra["max_batch_size"] == 16


def test_an_unknown_model_is_not_found_in_openais_envelope(sdk):
    with pytest.raises(openai.NotFoundError) as missing:
        sdk.models.retrieve("no-such-model")
    assert missing.value.body == {
        "message": "unknown model 'no-such-model'; see GET /v1/models",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


def test_a_missing_key_is_an_authentication_error(sdk):
    other = openai.OpenAI(base_url=str(sdk.base_url), api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        other.models.list()
