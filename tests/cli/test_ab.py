"""`llmq ab report` run as a command against a live API process, after jobs of both variants
of an alias ran on real echo workers."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx

from tests.api.routes import test_aliases
from tests.api.routes.test_aliases import job, post, users_by_variant
from tests.conftest import ROOT, make_key, wait_final

api, echo_worker, priced_worker = (
    test_aliases.api, test_aliases.echo_worker, test_aliases.priced_worker,
)  # the same fixtures  # fmt: skip


def ab(api, key: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, LLMQ_API_URL=api.url, LLMQ_API_KEY=key, COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "cli", "ab", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_the_report_puts_both_variants_side_by_side(api, echo_worker, priced_worker):
    key = make_key("ab-cli")
    users = users_by_variant("ab-echo", 2)
    ids = [post(api, key, "/v1/jobs", job("ab-echo", user=u)).json()["id"]
           for u in users["control"] + users["candidate"]]  # fmt: skip
    with httpx.Client(base_url=api.url, timeout=60) as http:
        for job_id in ids:
            wait_final(http, {"Authorization": f"Bearer {key}"}, job_id)
    done = ab(api, key, "report", "ab-echo")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = {cells[0]: cells[1:] for cells in table(done.stdout)}
    assert rows["ab-echo"] == ["control", "candidate"]
    assert rows["model"] == ["echo", "echo-priced"]
    assert rows["jobs"] == ["2", "2"] and rows["failure rate"] == ["0.0%", "0.0%"]
    assert rows["cost USD"][0] == "0" and float(rows["cost USD"][1]) > 0


def table(out: str) -> list[list[str]]:
    """The cells of each row rich drew."""
    return [
        [cell.strip() for cell in line.strip().strip("┃│").split("│" if "│" in line else "┃")]
        for line in out.splitlines()
        if line.strip().startswith(("│", "┃"))
    ]


def test_an_unknown_alias_or_no_jobs_yet_is_an_error(api):
    key = make_key("ab-none")
    missing = ab(api, key, "report", "ab-nope")
    assert missing.returncode == 1 and "unknown model 'ab-nope'" in missing.stdout
    empty = ab(api, key, "report", "ab-echo")
    assert empty.returncode == 1 and "no ended jobs" in empty.stdout
