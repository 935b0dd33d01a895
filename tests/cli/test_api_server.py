"""`llmq api` with several processes: one port, and one /metrics that counts all of them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from cli.api_server import MULTIPROC_ENV, multiprocess_env, worker_count
from cli.devstack import free_port
from llmq.processes import stop_process
from tests.conftest import ROOT as TMP
from tests.conftest import wait_for
from tests.llmq.test_metrics import samples

REPO = Path(__file__).resolve().parents[2]


def test_zero_workers_means_one_per_usable_core():
    assert worker_count(3) == 3
    assert worker_count(0) == len(os.sched_getaffinity(0))


def test_only_several_processes_get_a_metrics_directory_and_an_operators_is_kept():
    assert MULTIPROC_ENV not in multiprocess_env({}, 1)
    assert Path(multiprocess_env({}, 2)[MULTIPROC_ENV]).is_dir()
    assert multiprocess_env({MULTIPROC_ENV: "/mine"}, 4)[MULTIPROC_ENV] == "/mine"


def test_the_metrics_of_several_api_processes_count_every_request(environment, tmp_path):
    port, metrics_port = free_port(), free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), LLMQ_API_WORKERS="2",
               LLMQ_API_METRICS_PORT=str(metrics_port), LLMQ_API_METRICS_HOST="127.0.0.1",
               **{MULTIPROC_ENV: str(tmp_path)})  # fmt: skip
    log = (TMP / f"api-{port}.log").open("wb")
    argv = [sys.executable, "-m", "cli", "api", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            start_new_session=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: len(list(tmp_path.glob("counter_*.db"))) == 2, 90, "two API processes")
        wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, 60, "the API",
                 ignore=(httpx.HTTPError,))  # fmt: skip
        for _ in range(60):  # a new connection each: the processes take turns accepting
            assert httpx.get(f"{url}/v1/models").status_code == 401
        page = samples(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        counted = sum(
            v for (name, labels), v in page.items()
            if name == "llmq_http_requests_total" and ("route", "/v1/models") in labels
        )  # fmt: skip
        assert counted == 60
    finally:
        stop_process(proc, 30, group=True)
        log.close()
