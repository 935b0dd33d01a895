"""Schemathesis over the OpenAPI spec: no 5xx, and every answer as the spec documents it."""

from __future__ import annotations

import schemathesis

from reliability import fuzz
from tests.conftest import make_key


def test_every_route_answers_as_the_spec_documents(environment):
    app = fuzz.make_app()
    headers = {"Authorization": f"Bearer {make_key('fuzz', admin=True)}"}
    try:
        # "parked" is never served, so the fuzzer's jobs stay queued and no worker sees them.
        tally = fuzz.fuzz(app, headers, ["parked"], fuzz.EXAMPLES_QUICK)
    finally:
        schemathesis.python.asgi.shutdown_lifespans()
    spec = app.openapi()
    routes = {f"{method.upper()} {path}" for path, ops in spec["paths"].items() for method in ops}
    assert set(tally.requests) == routes
    assert sum(tally.server_errors.values()) == 0, tally.examples[:3]
    assert sum(tally.failures.values()) == 0, (dict(tally.kinds), tally.examples[:3])
    # Valid requests got past validation, into the code that writes rows.
    assert tally.statuses["POST /v1/jobs"]["202"] > 0, tally.statuses["POST /v1/jobs"]
