"""A real Flower, API and worker: Flower lists the worker and shows the job's task by its job id;
the prompt appears in neither Flower nor any process's log."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.devstack import free_port
from llmq.processes import stop_process
from tests.conftest import ROOT, wait_for

AUTH = ("ops", "flower-test-secret")


class Process:
    """A child process whose output goes to a file the test can read afterwards."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]):
        self.log_path = ROOT / f"{name}-{uuid.uuid4().hex[:6]}.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return Path(self.log_path).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 30, group=True)
        self.log.close()


@contextlib.contextmanager
def serving(name: str, argv: list[str], env: dict[str, str], ready_path: str, port: int):
    """A process answering 200 on `ready_path`: its URL and the process, stopped afterwards."""
    proc = Process(name, argv, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: httpx.get(f"{url}{ready_path}").status_code == 200,
            60,
            name,
            process=proc,
            ignore=(httpx.HTTPError,),
        )
        yield url, proc
    finally:
        proc.stop()


@pytest.fixture
def flower(environment) -> Iterator[tuple[str, Process]]:
    port = free_port()
    env = dict(os.environ, LLMQ_FLOWER_BASIC_AUTH=":".join(AUTH), PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "cli", "flower", "--port", str(port), "--loglevel", "info"]
    with serving("flower", argv, env, "/healthcheck", port) as served:
        yield served


@pytest.fixture
def api_process(environment, flower) -> Iterator[tuple[str, Process]]:
    """The API as it runs in production: uvicorn with its access log on."""
    port = free_port()
    env = dict(os.environ, LLMQ_FLOWER_URL=flower[0], PYTHONUNBUFFERED="1")
    argv = [sys.executable, "-m", "cli", "api", "--port", str(port)]
    with serving("api", argv, env, "/readyz", port) as served:
        yield served


def test_flower_shows_the_job_and_no_prompt_leaks(flower, api_process, start_worker, key):
    flower_url, flower_proc = flower
    api_url, api_proc = api_process
    worker = start_worker("echo")

    assert httpx.get(f"{flower_url}/api/workers").status_code == 401  # the API needs auth

    def worker_listed():
        workers = httpx.get(
            f"{flower_url}/api/workers", params={"refresh": 1}, auth=AUTH, timeout=10
        ).json()
        return [name for name in workers if name.startswith(f"echo-{worker.proc.pid}@")]

    (node,) = wait_for(
        worker_listed,
        60,
        "Flower listing the worker",
        process=flower_proc,
        ignore=(httpx.HTTPError,),
    )

    secret = f"secret-{uuid.uuid4().hex}"
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=60) as api:
        jobs = [
            api.post(
                "/v1/jobs", json={"model": "echo", "prompt": f"{secret} as a raw prompt"}
            ).json(),
            api.post(
                "/v1/jobs",
                json={"model": "echo", "messages": [{"role": "user", "content": secret}]},
            ).json(),
        ]
        done = [api.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json() for job in jobs]
    assert [job["status"] for job in done] == ["succeeded", "succeeded"]
    assert secret in done[0]["output"]["text"]  # the echo engine did see the prompt

    for job in done:
        link = job["links"]["flower"]
        assert link == f"{flower_url}/task/{job['id']}"

        def task_done(job_id=job["id"]):
            info = httpx.get(f"{flower_url}/api/task/info/{job_id}", auth=AUTH, timeout=10)
            return (
                info.json()
                if info.status_code == 200 and info.json()["state"] == "SUCCESS"
                else None
            )

        info = wait_for(
            task_done, 60, "Flower showing the task", process=flower_proc, ignore=(httpx.HTTPError,)
        )
        assert info["uuid"] == job["id"]
        assert info["name"] == "llmq.generate:echo"
        assert info["worker"] == node
        assert job["id"] in info["args"]
        assert info["result"] == "'succeeded'"
        assert httpx.get(link, auth=AUTH, timeout=10).status_code == 200  # the task's page

    listing = httpx.get(f"{flower_url}/api/tasks", auth=AUTH, timeout=10).text
    assert all(job["id"] in listing for job in done)
    assert secret not in listing
    for job in done:
        page = httpx.get(job["links"]["flower"], auth=AUTH, timeout=10).text
        assert job["id"] in page and secret not in page

    worker.stop()
    api_proc.stop()
    flower_proc.stop()
    logs = {
        "worker": worker.log_path.read_text(errors="replace"),
        "api": api_proc.output(),
        "flower": flower_proc.output(),
    }
    assert f"[{done[0]['id']}] received" in logs["worker"]  # the logs were captured
    assert "POST /v1/jobs" in logs["api"]
    if os.environ.get("LLMQ_TEST_SHOW_LOGS"):
        print(logs)
    for name, text in logs.items():
        assert secret not in text, f"the prompt leaked into the {name} log"
