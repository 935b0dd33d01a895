"""Fuzz suite: Schemathesis drives every route of the OpenAPI spec, in process.

Each operation gets schema-valid (positive) and schema-breaking (negative) requests, sent
with a valid admin key to the ASGI app, which runs against real Postgres and Redis. Every
answer must be under 500 and conform to the spec: a documented status code, its content
type, its schema and headers. Submitted bodies sometimes name a catalog echo model and job
routes sometimes name a real job, so requests get past "unknown model" and "no such job"
into the code that writes rows and publishes messages; no worker runs, so jobs stay queued.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import schemathesis
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from reliability.report import Figure, SuiteResult

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
# An event stream on a real job stays open while the job is queued: only unknown ids there.
OPEN_ENDED = {"GET /v1/jobs/{job_id}/events"}
EXAMPLES_QUICK = 8  # per operation and generation mode: the CI run
EXAMPLES_FULL = 150
BUDGET_FULL_S = 10.0  # per operation and mode: the full run stays within a few minutes
WEBHOOK_URL = "http://127.0.0.1:9/hook"  # allowed by `make_app`; nothing is delivered
MAX_TOKENS = 16  # what a steered job asks for: within any catalog model's max_new_tokens
LONG_POLL_MAX_S = 1  # a queued job holds `?wait=` (and a chat completion) that long
KEPT_FAILURES = 20  # failures kept in full (with a curl line to repeat them)


@dataclass
class Tally:
    """What the fuzzer sent and what came back, per operation ("GET /v1/jobs")."""

    requests: Counter = field(default_factory=Counter)
    server_errors: Counter = field(default_factory=Counter)
    failures: Counter = field(default_factory=Counter)
    statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    seconds: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)  # failure title -> count
    examples: list[dict[str, Any]] = field(default_factory=list)

    def record(self, label: str, status: int, failures: list[Exception], repeat: str) -> None:
        self.requests[label] += 1
        self.statuses[label][str(status)] += 1
        if status >= 500:
            self.server_errors[label] += 1
        if not failures:
            return
        self.failures[label] += 1
        for failure in failures:
            title = getattr(failure, "kind_title", type(failure).__name__)
            self.kinds[f"{label}: {title}"] += 1
            if len(self.examples) < KEPT_FAILURES:
                message = getattr(failure, "message", str(failure))
                self.examples.append(
                    {"operation": label, "status": status, "title": title,
                     "message": message[:2000], "repeat": repeat}
                )  # fmt: skip

    def per_route(self) -> dict[str, dict[str, Any]]:
        return {
            label: {
                "requests": self.requests[label],
                "5xx": self.server_errors[label],
                "failures": self.failures[label],
                "statuses": dict(sorted(self.statuses[label].items())),
                "seconds": round(self.seconds[label], 1),
            }
            for label in sorted(self.requests)
        }


def _seed_jobs(schema, headers: dict[str, str], model: str) -> list[str]:
    """Two jobs the fuzzer can read, list and cancel: one queued, one cancelled with a
    webhook delivery to log and redeliver."""
    ids = []
    for webhook in ({}, {"webhook_url": WEBHOOK_URL}):
        body = {"model": model, "prompt": "fuzz", **webhook}
        case = schema["/v1/jobs"]["POST"].Case(body=body)
        response = case.call(headers=headers)
        if response.status_code != 202:
            raise RuntimeError(f"could not submit a seed job: {response.status_code}")
        ids.append(response.json()["id"])
    cancel = schema["/v1/jobs/{job_id}/cancel"]["POST"].Case(path_parameters={"job_id": ids[1]})
    if cancel.call(headers=headers).status_code != 200:
        raise RuntimeError("could not cancel a seed job")
    return ids


def _fit(item: dict[str, Any], model: str, use_messages: bool) -> None:
    """Make a generated submit item one the catalog and settings accept."""
    item["model"] = model
    if (item.get("prompt") is None) == (item.get("messages") is None):
        if use_messages:
            item.pop("prompt", None)
            item["messages"] = [{"role": "user", "content": "fuzz"}]
        else:
            item.pop("messages", None)
            item["prompt"] = "fuzz"
    for name, largest in (("max_tokens", MAX_TOKENS), ("expires_in_s", 3600)):
        if isinstance(item.get(name), int):
            item[name] = min(item[name], largest)
    item.pop("seed", None)  # a continuous-batching model refuses one
    if item.get("webhook_url") is not None:  # a generated host would be looked up in DNS
        item["webhook_url"] = WEBHOOK_URL


def _steer(case, data, models: list[str], job_ids: list[str]) -> None:
    """Point some valid requests at a real model or job, so they reach past the first lookup.

    Only valid ones: a schema-breaking request must stay broken in the part it breaks.
    """
    body = case.body
    if isinstance(body, dict):
        items = body.get("jobs") if isinstance(body.get("jobs"), list) else [body]
        model = data.draw(st.sampled_from([None, *models]), label="model")
        use_messages = data.draw(st.booleans(), label="messages")
        for item in items:
            if model and isinstance(item, dict) and "model" in item:
                _fit(item, model, use_messages)
    path = case.path_parameters
    if isinstance(path, dict) and "job_id" in path and case.operation.label not in OPEN_ENDED:
        job_id = data.draw(st.sampled_from([None, *job_ids]), label="job_id")
        if job_id:
            path["job_id"] = job_id


class OutOfTime(Exception):
    """The operation's time budget is spent: stop generating."""


def send(case, headers: dict[str, str], tally: Tally) -> None:
    """One request and its checks, recorded; a failed check is counted, never raised."""
    label = case.operation.label
    repeat = case.as_curl_command(headers=headers)
    try:
        response = case.call(headers=headers)
    except Exception as exc:  # in process, an error the app did not handle surfaces here
        tally.record(label, 500, [exc], repeat)
        return
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
        failures: list[Exception] = []
    except FailureGroup as group:
        failures = list(group.exceptions)
    tally.record(label, response.status_code, failures, repeat)


def fuzz_operation(operation, mode, examples: int, budget_s: float, steer, headers, tally):
    """Up to `examples` generated requests to one operation in one generation mode, sent
    until `budget_s` is spent."""
    deadline = time.monotonic() + budget_s

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=budget_s == math.inf,  # no time limit: the same requests every run
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        phases=[Phase.generate],
    )
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def test(case, data) -> None:
        if time.monotonic() > deadline:
            raise OutOfTime
        if mode is schemathesis.GenerationMode.POSITIVE:
            steer(case, data)
        send(case, headers, tally)

    # Unsatisfiable: nothing to break (no parameters, no body).
    with contextlib.suppress(Unsatisfiable, OutOfTime):
        test()


def fuzz(
    app,
    headers: dict[str, str],
    models: list[str],
    examples: int,
    budget_s: float = math.inf,
) -> Tally:
    """Run every operation of `app`'s spec in both modes; never raises on a failed check."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    job_ids = _seed_jobs(schema, headers, models[0])

    def steer(case, data) -> None:
        _steer(case, data, models, job_ids)

    tally = Tally()
    for result in schema.get_all_operations():
        operation = result.ok()
        started = time.monotonic()
        for mode in MODES:
            fuzz_operation(operation, mode, examples, budget_s, steer, headers, tally)
        tally.seconds[operation.label] += time.monotonic() - started
    return tally


def run(quick: bool = False) -> SuiteResult:
    from bench.env import BenchEnv

    examples = EXAMPLES_QUICK if quick else EXAMPLES_FULL
    env = BenchEnv()
    env.setup()
    started = time.monotonic()
    try:
        app = make_app()
        headers = {"Authorization": f"Bearer {_admin_key()}"}
        budget_s = math.inf if quick else BUDGET_FULL_S
        tally = fuzz(app, headers, ["echo-unserved", "echo"], examples, budget_s)
    finally:
        schemathesis.python.asgi.shutdown_lifespans()
        env.teardown()
    elapsed_s = time.monotonic() - started
    total = sum(tally.requests.values())
    server_errors = sum(tally.server_errors.values())
    failures = sum(tally.failures.values())
    return SuiteResult(
        suite="fuzz",
        how=(
            f"Schemathesis {schemathesis.__version__} over /openapi.json, in process against "
            f"the ASGI app with real Postgres and Redis and an admin key: up to {examples} "
            f"schema-valid and {examples} schema-breaking requests per operation"
            + ("" if quick else f" (at most {BUDGET_FULL_S:.0f} s each)")
            + f", {len(tally.requests)} operations, {total} requests in {elapsed_s:.0f} s. "
            "Checks: no 5xx; every answer's status code, content type, headers and body "
            "as the spec documents them. `python -m reliability fuzz`."
        ),
        figures=[
            Figure("requests made", str(total)),
            Figure("operations covered", str(len(tally.requests))),
            Figure("5xx responses", str(server_errors), "0", server_errors == 0),
            Figure("spec-conformance failures", str(failures), "0", failures == 0),
        ],
        raw={
            "per_route": tally.per_route(),
            "failure_kinds": dict(tally.kinds.most_common()),
            "failure_examples": tally.examples,
        },
    )


def make_app():
    """The API as the fuzzer runs it: long-polls and chat completions on a queued job end
    after a second, and webhooks may name loopback (no webhook sender runs)."""
    from api.app import create_app
    from llmq.settings import Settings

    return create_app(
        Settings(
            long_poll_max_s=LONG_POLL_MAX_S,
            openai_wait_limit_s=LONG_POLL_MAX_S,
            webhook_allowed_networks="127.0.0.0/8",
        )
    )


def _admin_key() -> str:
    from llmq.db import session_scope
    from llmq.keys import create_key

    with session_scope() as session:
        return create_key(session, "fuzz", is_admin=True)[1]
