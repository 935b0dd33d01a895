"""End to end on the real SmolLM2-135M-Instruct, through the API, Redis, a worker and Postgres."""

from tests.conftest import wait_final


def test_smollm2_knows_the_capital_of_france(client, auth, start_worker):
    start_worker("smollm2-135m")
    question = {"role": "user", "content": "What is the capital of France?"}
    ids = [
        client.post(
            "/v1/jobs",
            json={
                "model": "smollm2-135m",
                "messages": [question],
                "max_tokens": 24,
                "temperature": 0,
            },
            headers=auth,
        ).json()["id"]
        for _ in range(2)
    ]
    jobs = [wait_final(client, auth, i, timeout_s=120) for i in ids]
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert "Paris" in job["output"]["text"], job["output"]
        assert job["output"]["finish_reason"] == "stop"  # it ends on its own EOS
        assert 0 < job["usage"]["completion_tokens"] < 24
    assert jobs[0]["output"]["text"] == jobs[1]["output"]["text"]
