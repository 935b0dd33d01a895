"""Bad input: a 4xx problem+json naming the field, and no row or message left behind."""

import pytest
import sqlalchemy as sa

from llmq.db import session_scope
from llmq.models import Job
from llmq.queues import waiting_count
from tests.conftest import REDIS_PREFIX

GOOD = {"model": "tiny-serial", "prompt": "hello"}


def _job_count() -> int:
    with session_scope() as session:
        return session.scalar(sa.select(sa.func.count()).select_from(Job))


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"model": "nope", "prompt": "hi"}, 422, "model"),
        ({"prompt": "hi"}, 422, "model"),
        ({"model": "tiny-serial"}, 422, "prompt"),
        ({**GOOD, "messages": [{"role": "user", "content": "x"}]}, 422, "prompt"),
        ({**GOOD, "max_tokens": "ten"}, 422, "max_tokens"),
        ({**GOOD, "max_tokens": 0}, 422, "max_tokens"),
        ({**GOOD, "max_tokens": 10_000}, 422, "max_tokens"),
        ({**GOOD, "temperature": 5}, 422, "temperature"),
        ({**GOOD, "priority": 10}, 422, "priority"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 422, "stop"),
        ({**GOOD, "unknown_field": 1}, 422, "unknown_field"),
        (
            {"model": "tiny-serial", "messages": [{"role": "robot", "content": "x"}]},
            422,
            "messages[0].role",
        ),
        ({"model": "tiny-serial", "messages": [{"role": "user"}]}, 422, "messages[0].content"),
        ({**GOOD, "prompt": "x" * 200_001}, 422, "prompt"),
        ({**GOOD, "webhook_url": "not a url"}, 422, "webhook_url"),
        ({**GOOD, "expires_in_s": 0}, 422, "expires_in_s"),
        ({**GOOD, "expires_in_s": "soon"}, 422, "expires_in_s"),
        ({**GOOD, "expires_in_s": 2_592_001}, 422, "expires_in_s"),
    ],
)
def test_bad_submit_is_problem_json_naming_field(client, auth, redis_client, body, status, field):
    before_rows = _job_count()
    before_msgs = waiting_count(redis_client, "tiny-serial", REDIS_PREFIX)
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["type"]
    assert field in [e["field"] for e in problem["errors"]], problem
    assert _job_count() == before_rows
    assert waiting_count(redis_client, "tiny-serial", REDIS_PREFIX) == before_msgs


def test_oversize_body_is_413(client, auth):
    response = client.post(
        "/v1/jobs",
        content=b'{"model":"tiny","prompt":"' + b"x" * 1_100_000 + b'"}',
        headers={**auth, "content-type": "application/json"},
    )
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")


def test_malformed_json_is_422(client, auth):
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={**auth, "content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["errors"]


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer llmq_wrong"},
        {"Authorization": "Bearer sk-other"},
        {"Authorization": "Basic abc"},
    ],
)
def test_missing_or_bad_key_is_401(client, headers):
    response = client.post("/v1/jobs", json=GOOD, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("application/problem+json")


def test_unknown_job_is_404(client, auth):
    for job_id in ("00000000-0000-0000-0000-000000000000", "not-a-uuid"):
        response = client.get(f"/v1/jobs/{job_id}", headers=auth)
        assert response.status_code == 404
        assert response.json()["type"] == "/problems/not-found"


def test_bad_list_filters(client, auth):
    assert client.get("/v1/jobs", params={"status": "weird"}, headers=auth).status_code == 422
    response = client.get("/v1/jobs", params={"cursor": "!!!"}, headers=auth)
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "cursor"


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    assert client.get("/metrics").status_code == 404  # served on the internal port


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**GOOD, "prompt": "nul \x00 inside"}, "prompt"),
        ({**GOOD, "prompt": ""}, "prompt"),
        (
            {"model": "tiny-serial", "messages": [{"role": "user", "content": "a\x00b"}]},
            "messages[0].content",
        ),
        ({**GOOD, "metadata": {"k": "v\x00"}}, "metadata.k"),
        ({**GOOD, "stop": ["\x00"]}, "stop"),
    ],
)
def test_text_postgres_cannot_store_is_refused(client, auth, body, field):
    response = client.post("/v1/jobs", json=body, headers=auth)
    assert response.status_code == 422, response.text
    assert any(e["field"].startswith(field) for e in response.json()["errors"]), response.json()


def test_nan_in_metadata_is_refused(client, auth):
    response = client.post(
        "/v1/jobs",
        content=b'{"model": "tiny-serial", "prompt": "x", "metadata": {"score": NaN}}',
        headers={**auth, "content-type": "application/json"},
    )
    assert response.status_code == 422


def test_nul_in_list_filter_is_refused(client, auth):
    assert client.get("/v1/jobs", params={"model": "a\x00"}, headers=auth).status_code == 422


def test_bad_last_event_id_is_refused(client, auth):
    job = client.post("/v1/jobs", json=GOOD, headers=auth).json()
    response = client.get(f"/v1/jobs/{job['id']}/events", headers={**auth, "Last-Event-ID": "x"})
    assert response.status_code == 422
    client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)


def test_a_seed_for_sampling_under_continuous_batching_is_refused(client, auth):
    """Continuous batching has no per-request seed: say so instead of ignoring it."""
    sampled = {"model": "tiny-cb", "prompt": "hi", "temperature": 0.7, "seed": 7}
    before = _job_count()
    response = client.post("/v1/jobs", json=sampled, headers=auth)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "seed"
    assert _job_count() == before
    greedy = client.post("/v1/jobs", json=sampled | {"temperature": 0}, headers=auth)
    assert greedy.status_code == 202  # a seed does not matter to a greedy job
    client.post(f"/v1/jobs/{greedy.json()['id']}/cancel", headers=auth)


SECRET = "q7-private-request-text"


@pytest.mark.parametrize(
    ("text_json", "field"),
    [
        (f'"prompt": "\\ud800{SECRET}"', "prompt"),
        (f'"messages": [{{"role": "user", "content": "{SECRET}\\udfff"}}]', "messages[0].content"),
        (f'"prompt": "x", "stop": "\\ud800{SECRET}"', "stop"),
        (f'"prompt": "x", "stop": ["ok", "{SECRET}\\ud800"]', "stop[1]"),
        (f'"prompt": "x", "metadata": {{"k": "\\ud800{SECRET}"}}', "metadata.k"),
        (f'"prompt": "x", "metadata": {{"\\ud800{SECRET}": 1}}', "metadata"),
        (f'"prompt": "x", "webhook_url": "https://example.com/\\ud800{SECRET}"', "webhook_url"),
    ],
)
def test_text_that_is_not_utf8_is_refused_and_not_logged(client, auth, caplog, text_json, field):
    """A lone surrogate (valid JSON, not encodable as UTF-8) is a 422 naming its field, and
    no request text reaches the log."""
    body = f'{{"model": "tiny-serial", {text_json}}}'.encode()
    before = _job_count()
    response = client.post(
        "/v1/jobs", content=body, headers={**auth, "content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert SECRET not in response.text
    assert SECRET not in caplog.text
    assert _job_count() == before


@pytest.mark.parametrize(
    ("loc", "body", "missing", "field"),
    [
        (("body", "messages", 0, "content"), {"messages": [{}]}, True, "messages[0].content"),
        (
            ("body", "metadata", "k", "constrained-str"),
            {"metadata": {"k": "v"}},
            False,
            "metadata.k",
        ),
        (("body", "stop", "list[constrained-str]", 1), {"stop": ["a", "b"]}, False, "stop[1]"),
        (("body", "stop", "constrained-str"), {"stop": {"a": 1}}, False, "stop"),
        (("body", "metadata", "secret key", "[key]"), {"metadata": {"x": 1}}, False, "metadata"),
        (("body", "model"), {}, True, "model"),
        (("query", "limit"), None, False, "limit"),
    ],
)
def test_field_path_names_fields_as_the_client_wrote_them(loc, body, missing, field):
    from api.fields import field_path

    assert field_path(loc, body, missing=missing) == field
