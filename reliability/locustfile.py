"""Locust users for `reliability.load`: each submits an echo job and long-polls it until final.

Run by `reliability.load` as `locust --headless` with a fixed user count; each user starts at
most `LLMQ_LOAD_JOBS_PER_USER_S` jobs a second (`constant_throughput`), so the total rate is
users x that, as long as a job's round trip stays under 1 / that. Targets loopback only.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import time
import uuid
from urllib.parse import urlsplit

from locust import HttpUser, constant_throughput, events, task
from locust.env import Environment

FINAL = ("succeeded", "failed", "cancelled", "expired")
TIMEOUT_S = 60
JOB = "submit→final"
_run: dict[str, Environment] = {}


@events.init.add_listener
def _keep(environment: Environment, **_) -> None:
    _run["env"] = environment


@events.quit.add_listener
def _save(**_) -> None:
    """After the last user stopped: the round trips and errors, to LLMQ_LOAD_RESULT_PATH."""
    stats = _run["env"].runner.stats
    job = stats.get(JOB, "JOB")
    result = {
        "jobs": job.num_requests,
        "p50_ms": job.get_response_time_percentile(0.5),
        "p99_ms": job.get_response_time_percentile(0.99),
        "max_ms": job.max_response_time,
        "errors": {f"{e.method} {e.name}: {e.error}": e.occurrences for e in stats.errors.values()},
    }
    with open(os.environ["LLMQ_LOAD_RESULT_PATH"], "w") as f:
        json.dump(result, f)


class Submitter(HttpUser):
    wait_time = constant_throughput(float(os.environ.get("LLMQ_LOAD_JOBS_PER_USER_S", "0.5")))
    started = itertools.count()  # users take the tenants' keys in turn

    def on_start(self) -> None:
        host = urlsplit(self.host).hostname or ""
        if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
            raise RuntimeError(f"the load test targets loopback only, not {host}")
        keys = os.environ["LLMQ_LOAD_API_KEYS"].split(",")
        key = keys[next(Submitter.started) % len(keys)]
        self.client.headers["Authorization"] = f"Bearer {key}"
        self.body = {"model": os.environ.get("LLMQ_LOAD_MODEL", "echo"), "max_tokens": 4}
        if os.environ.get("LLMQ_LOAD_WEBHOOK_URL"):
            self.body["webhook_url"] = os.environ["LLMQ_LOAD_WEBHOOK_URL"]

    @task
    def submit_and_wait(self) -> None:
        """One job: submit, then long-poll until final; its round trip is 'submit→final'."""
        started = time.perf_counter()
        body = dict(self.body, prompt=f"load {uuid.uuid4().hex} one two three")
        response = self.client.post("/v1/jobs", json=body, name="submit", timeout=TIMEOUT_S)
        if response.status_code != 202:
            return  # counted as a failure of "submit" by locust
        job = response.json()
        while job["status"] not in FINAL:
            if time.perf_counter() - started > TIMEOUT_S:
                break
            response = self.client.get(
                f"/v1/jobs/{job['id']}", params={"wait": 30}, name="wait", timeout=TIMEOUT_S
            )
            if response.status_code != 200:
                return
            job = response.json()
        error = None if job["status"] == "succeeded" else RuntimeError(f"job {job['status']}")
        self.environment.events.request.fire(
            request_type="JOB",
            name=JOB,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )
