"""After jobs run, the API's and the worker's /metrics carry the named series, labels and counts.

The API serves its metrics on an internal port (`LLMQ_API_METRICS_PORT`), never on the public
one."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cli.devstack import free_port
from llmq import events, metrics
from tests.conftest import REDIS_PREFIX, wait_final, wait_for


@pytest.fixture(scope="module")
def metrics_url(environment) -> Iterator[str]:
    """An API app of this module's own, its internal metrics endpoint on a free port."""
    from fastapi.testclient import TestClient

    from api.app import create_app
    from llmq.settings import get_settings

    port = free_port()
    settings = get_settings().model_copy(
        update={"api_metrics_port": port, "api_metrics_host": "127.0.0.1"}
    )
    with TestClient(create_app(settings)):
        yield f"http://127.0.0.1:{port}"


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(f"{url}/metrics")
    assert response.status_code == 200
    return samples(response.text)


def test_metrics_are_off_the_public_port(client, metrics_url):
    assert client.get("/metrics").status_code == 404
    assert client.get("/metrics/targets").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    assert "llmq_http_requests_total" in httpx.get(f"{metrics_url}/metrics").text
    assert isinstance(httpx.get(f"{metrics_url}/metrics/targets").json(), list)


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of a /metrics page, keyed by name and label set."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(page: dict, name: str, **labels: str) -> float:
    return page.get((name, frozenset(labels.items())), 0.0)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def worker_beat(redis_client, model: str) -> dict:
    keys = list(redis_client.scan_iter(match=events.worker_pattern(REDIS_PREFIX, model)))
    assert len(keys) == 1, keys
    return json.loads(redis_client.get(keys[0]))


def test_api_and_worker_metrics_after_jobs(client, auth, redis_client, start_worker, metrics_url):
    before = scrape(metrics_url)
    worker = start_worker("echo")
    beat = worker_beat(redis_client, "echo")
    assert beat["metrics_port"] >= 9200 and beat["metrics_host"]
    prompts = ["one two three", "four five", "six"]
    ids = []
    for prompt in prompts:
        response = client.post(
            "/v1/jobs", json={"model": "echo", "prompt": prompt, "max_tokens": 8}, headers=auth
        )
        assert response.status_code == 202
        ids.append(response.json()["id"])
    bad = client.post("/v1/jobs", json={"model": "echo", "prompt": 5}, headers=auth)
    assert bad.status_code == 422
    finished = [wait_final(client, auth, job_id) for job_id in ids]
    assert all(job["status"] == "succeeded" for job in finished)

    api = scrape(metrics_url)
    assert delta(api, before, "llmq_jobs_submitted_total", model="echo") == 3
    posted = {"route": "/v1/jobs", "method": "POST", "status": "202"}
    assert delta(api, before, "llmq_http_requests_total", **posted) == 3
    assert delta(api, before, "llmq_rejections_total", reason="validation") == 1
    latency = {"route": "/v1/jobs/{job_id}", "method": "GET"}
    assert value(api, "llmq_http_request_duration_seconds_count", **latency) > 0
    # queue gauges, read from Redis and Postgres at scrape time: nothing waits now
    assert value(api, metrics.QUEUE_WAITING, model="echo") == 0
    assert (metrics.QUEUE_IN_FLIGHT, frozenset({"model": "echo"}.items())) in api
    assert (metrics.QUEUE_OLDEST_AGE, frozenset({"model": "echo"}.items())) in api
    assert value(api, metrics.WORKERS_LIVE, model="echo") == 1
    assert not any("job_id" in dict(labels) for _, labels in api)

    # service discovery hands Prometheus the worker's own endpoint
    targets = httpx.get(f"{metrics_url}/metrics/targets").json()
    address = f"{beat['metrics_host']}:{beat['metrics_port']}"
    assert {"targets": [address], "labels": {"__meta_llmq_model": "echo",
            "__meta_llmq_node": beat["node"]}} in targets  # fmt: skip

    page = samples(httpx.get(f"http://127.0.0.1:{beat['metrics_port']}/metrics").text)
    tokens = sum(len(p.split()) for p in prompts)
    assert value(page, "llmq_jobs_finished_total", model="echo", status="succeeded") == 3
    assert value(page, "llmq_prompt_tokens_total", model="echo") == tokens
    assert value(page, "llmq_completion_tokens_total", model="echo") == tokens
    # One observation per batch: a batch of n jobs is 1/n of a batch seen from each job.
    batches = sum(1 / job["timings"]["batch_size"] for job in finished)
    assert value(page, "llmq_batch_size_count", model="echo") == pytest.approx(batches)
    assert value(page, "llmq_batch_size_sum", model="echo") == 3
    assert value(page, "llmq_queue_wait_seconds_count", model="echo") == 3
    assert value(page, "llmq_time_to_first_token_seconds_count", model="echo") == 3
    assert value(page, "llmq_inference_seconds_count", model="echo") == pytest.approx(batches)
    assert value(page, "llmq_cost_usd_total", model="echo") == 0  # echo is free
    assert value(page, metrics.DEVICE_MEMORY, model="echo", device="cpu") > 10_000_000
    assert ("llmq_engine_errors_total", frozenset({"model": "echo"}.items())) not in page
    worker.stop()


def test_queue_gauges_count_waiting_jobs(client, auth, metrics_url):
    """With no worker for `idle`, submitted jobs wait: the gauges say how many and how old."""
    ids = [
        client.post("/v1/jobs", json={"model": "idle", "prompt": "x"}, headers=auth).json()["id"]
        for _ in range(2)
    ]

    def aged() -> dict | None:
        page = scrape(metrics_url)
        return page if value(page, metrics.QUEUE_OLDEST_AGE, model="idle") >= 1.0 else None

    page = wait_for(aged, 30, "the oldest waiting job to be a second old", interval_s=0.2)
    assert value(page, metrics.QUEUE_WAITING, model="idle") >= 2
    assert value(page, metrics.WORKERS_LIVE, model="idle") == 0
    for job_id in ids:
        client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)


def test_priced_model_counts_money(client, auth, tiny_worker, redis_client):
    """The cost counter moves by what the ledger recorded (tiny is priced per token)."""
    beat = worker_beat(redis_client, "tiny")
    url = f"http://127.0.0.1:{beat['metrics_port']}/metrics"
    before = samples(httpx.get(url).text)
    job = client.post(
        "/v1/jobs", json={"model": "tiny", "prompt": "hello world", "max_tokens": 4}, headers=auth
    ).json()
    job = wait_final(client, auth, job["id"])
    after = samples(httpx.get(url).text)
    spent = delta(after, before, "llmq_cost_usd_total", model="tiny")
    assert abs(spent - float(job["usage"]["cost_usd"])) < 1e-12
    gpu_spent = delta(after, before, "llmq_gpu_cost_usd_total", model="tiny")
    assert gpu_spent > 0 and abs(gpu_spent - float(job["usage"]["gpu_cost_usd"])) < 1e-12
    assert delta(after, before, "llmq_time_to_first_token_seconds_count", model="tiny") == 1


def test_workers_on_one_machine_get_their_own_metrics_ports():
    base = free_port()
    first, second = metrics.serve_metrics(base), metrics.serve_metrics(base)
    assert first == base and second is not None and second > first
    assert "llmq_batch_size" in httpx.get(f"http://127.0.0.1:{second}/metrics").text
    assert metrics.serve_metrics(0) is None  # 0 turns the server off


def test_queue_gauges_survive_redis_being_down(environment):
    """A scrape with Redis unreachable still answers, with what Postgres knows."""
    import redis
    from prometheus_client import CollectorRegistry, generate_latest

    from llmq.queue_metrics import QueueCollector

    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    registry = CollectorRegistry()
    registry.register(QueueCollector(lambda: ["echo"], dead, REDIS_PREFIX))
    page = samples(generate_latest(registry).decode())
    assert (metrics.QUEUE_IN_FLIGHT, frozenset({"model": "echo"}.items())) in page
    assert not any(name == metrics.QUEUE_WAITING for name, _ in page)
