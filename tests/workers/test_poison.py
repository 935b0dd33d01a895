"""One job's bad input fails that job alone: its batch companions and the engine go on."""

from __future__ import annotations

import pytest

from tests.conftest import make_key, wait_final


@pytest.mark.parametrize("model", ["tiny", "tiny-cb"])
def test_messages_the_chat_template_rejects_fail_only_their_job(client, start_worker, model):
    good_auth = {"Authorization": f"Bearer {make_key('good')}"}
    bad_auth = {"Authorization": f"Bearer {make_key('bad')}"}

    def submit(auth: dict[str, str], role: str) -> str:
        body = {"model": model, "messages": [{"role": role, "content": "Hello"}], "max_tokens": 3}
        response = client.post("/v1/jobs", json=body, headers=auth)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    # Queued before the worker starts, so they are claimed and batched together.
    good = [submit(good_auth, "user") for _ in range(2)]
    poison = submit(bad_auth, "tool")  # the template raises on a role it does not know
    good.append(submit(good_auth, "user"))
    start_worker(model)

    for job in (wait_final(client, good_auth, i) for i in good):
        assert job["status"] == "succeeded" and job["usage"]["completion_tokens"] == 3, job
    failed = wait_final(client, bad_auth, poison)
    assert failed["status"] == "failed", failed
    assert failed["error"]["code"] == "invalid_messages"
    assert "tool role" in failed["error"]["message"]
    later = wait_final(client, good_auth, submit(good_auth, "user"))
    assert later["status"] == "succeeded", later  # the engine still serves
