"""Server-sent events carry each job's text as it is generated, batched jobs included."""

from __future__ import annotations

import json

from tests.conftest import wait_final


def read_events(
    client, auth, job_id: str, last_event_id: str | None = None
) -> list[tuple[str, str, dict]]:
    headers = dict(auth) | ({"Last-Event-ID": last_event_id} if last_event_id else {})
    out, event, event_id = [], None, None
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("id:"):
                event_id = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                out.append((event, event_id, json.loads(line.split(":", 1)[1])))
                if event == "job":
                    break
    return out


def first_new_pair(text: str) -> str:
    """Two characters that first occur well inside the text: a stop sequence that cuts it."""
    for k in range(4, len(text) - 1):
        if text.find(text[k : k + 2]) == k and text[k : k + 2].strip():
            return text[k : k + 2]
    raise AssertionError(f"no usable stop sequence in {text!r}")


def submit(client, auth, **body) -> str:
    body = {"model": "tiny", "temperature": 0, **body}
    return client.post("/v1/jobs", json=body, headers=auth).json()["id"]


def test_batched_jobs_stream_the_same_text_as_their_output(client, auth, tiny_worker):
    probe = wait_final(client, auth, submit(client, auth, prompt="Hello world", max_tokens=24))
    stop = first_new_pair(probe["output"]["text"])
    bodies = [
        {"prompt": "Hello world", "max_tokens": 24},
        {"prompt": "Hello world", "max_tokens": 24, "stop": [stop]},
        {"prompt": "another prompt to stream", "max_tokens": 9},
    ]
    jobs = [{"model": "tiny", "temperature": 0, **body} for body in bodies]
    # One bulk submit: the three reach the queue together, so they share a batch.
    ids = client.post("/v1/jobs/bulk", json={"jobs": jobs}, headers=auth).json()["ids"]
    for n, job_id in enumerate(ids):
        events = read_events(client, auth, job_id)
        tokens = [data["text"] for kind, _, data in events if kind == "token"]
        kind, _, final = events[-1]
        assert kind == "job" and final["status"] == "succeeded"
        assert "".join(tokens) == final["output"]["text"]
        if n == 0:
            assert len(tokens) >= 3  # it arrived in pieces, not only at the end
    assert max(wait_final(client, auth, i)["timings"]["batch_size"] for i in ids) >= 2


def test_reconnect_with_last_event_id_resumes(client, auth, tiny_worker):
    job_id = submit(client, auth, prompt="resume me", max_tokens=16)
    first = read_events(client, auth, job_id)
    tokens = [(event_id, data["text"]) for kind, event_id, data in first if kind == "token"]
    resumed = read_events(client, auth, job_id, last_event_id=tokens[1][0])
    rest = [data["text"] for kind, _, data in resumed if kind == "token"]
    assert rest == [text for _, text in tokens[2:]]
    assert resumed[-1][0] == "job"


def test_events_of_a_cancelled_job_end_with_the_job(client, auth):
    job_id = submit(client, auth, model="idle", prompt="never runs")
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    events = read_events(client, auth, job_id)
    assert [kind for kind, _, _ in events] == ["job"] and events[0][2]["status"] == "cancelled"


def test_events_of_another_keys_job_are_404(client, auth, other_auth):
    job_id = submit(client, auth, model="idle", prompt="private")
    assert client.get(f"/v1/jobs/{job_id}/events", headers=other_auth).status_code == 404
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)


def test_events_resumed_past_the_end_close_with_the_job(client, auth):
    """A client resuming after the stream's last entry gets the job, not an endless wait."""
    job_id = submit(client, auth, model="idle", prompt="never runs")
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
    events = read_events(client, auth, job_id, last_event_id="99999999999999-0")
    assert [kind for kind, _, _ in events] == ["job"] and events[0][2]["status"] == "cancelled"


def test_events_of_a_queued_job_outlive_quiet_reads(client, auth):
    """Reads that find nothing new for longer than Redis's socket timeout keep the stream."""
    job_id = submit(client, auth, model="parked", prompt="waits")
    kinds = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=auth) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(": ping"):  # sent every 15 s: several quiet reads went by
                assert client.post(f"/v1/jobs/{job_id}/cancel", headers=auth).status_code == 200
            elif line.startswith("event:"):
                kinds.append(line.split(":", 1)[1].strip())
                if kinds[-1] == "job":
                    break
    assert kinds == ["job"]
